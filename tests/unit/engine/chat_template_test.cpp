// Chat templates (engine/chat_template.cpp): multi-turn conversations in each recognised family, the default
// system prompt of ChatML, and roles that are refused.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/error.h"

namespace qs {
namespace {

// Markers are all the renderer looks at, so a template text only needs to contain them.
const std::string kChatMl =
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{m.role}}...";
const std::string kLlama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}";
const std::string kZephyr = "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] }}";

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Capital of France?"}};

TEST(ChatTemplate, ChatMlRendersEveryTurnAndOpensTheAssistant) {
  EXPECT_EQ(render_chat_template(kChatMl, kConversation),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ChatMlInsertsItsDefaultSystemOnlyWhenNoneIsGiven) {
  EXPECT_EQ(render_chat_template(kChatMl, {{"user", "Hi"}}),
            "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  const std::string with_system = render_chat_template(kChatMl, {{"system", "S"}, {"user", "Hi"}});
  EXPECT_EQ(with_system.find("helpful"), std::string::npos);
}

TEST(ChatTemplate, Llama3AndZephyrFamilies) {
  EXPECT_EQ(render_chat_template(kLlama3, {{"user", "Hi"}, {"assistant", "Yo"}, {"user", "Q"}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat_template(kZephyr, {{"system", "S"}, {"user", "Hi"}}),
            "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
}

TEST(ChatTemplate, NoTemplateJoinsTheTurnsAsParagraphs) {
  EXPECT_EQ(render_chat_template("", {{"system", "S"}, {"user", "Hi"}}), "S\n\nHi");
}

TEST(ChatTemplate, UnknownRoleIsRefusedByName) {
  try {
    render_chat_template(kChatMl, {{"tool", "x"}});
    FAIL() << "role 'tool' accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'tool'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qs
