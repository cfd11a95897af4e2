// Chat templates for instruct models. Rather than a Jinja interpreter, the known template families are
// recognised by their markers (ChatML, Llama 3, Zephyr/TinyLlama, Gemma) and rendered directly.
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/error.h"

namespace qs {

namespace {
// The default system prompt a ChatML template inserts when none is given (SmolLM2 has one), read from
// the template text: "<|im_start|>system\n<text><|im_end|>".
std::string chatml_default_system(const std::string& tmpl) {
  const std::string open = "<|im_start|>system\n";
  const size_t a = tmpl.find(open);
  if (a == std::string::npos) return "";
  const size_t b = tmpl.find("<|im_end|>", a + open.size());
  if (b == std::string::npos) return "";
  const std::string text = tmpl.substr(a + open.size(), b - a - open.size());
  // Only a literal: a template that builds the system text from variables has '{' in it.
  return text.find('{') == std::string::npos ? text : "";
}
}  // namespace

std::string Engine::apply_chat_template(const std::string& user_message, const std::string& system) const {
  std::vector<ChatMessage> messages;
  if (!system.empty()) messages.push_back({"system", system});
  messages.push_back({"user", user_message});
  return apply_chat_template(messages);
}

std::string Engine::apply_chat_template(const std::vector<ChatMessage>& messages) const {
  return render_chat_template(model().config().chat_template, messages);
}

std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages) {
  for (const ChatMessage& m : messages) {
    QS_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", ErrorCode::kInvalidArgument,
             "chat message role '", m.role.substr(0, 32), "' is not one of: system, user, assistant");
  }
  const bool has_system = !messages.empty() && messages.front().role == "system";
  std::string out;
  if (tmpl.find("<|im_start|>") != std::string::npos) {
    if (!has_system) {
      const std::string sys = chatml_default_system(tmpl);
      if (!sys.empty()) out += "<|im_start|>system\n" + sys + "<|im_end|>\n";
    }
    for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out + "<|im_start|>assistant\n";
  }
  if (tmpl.find("<|start_header_id|>") != std::string::npos) {
    out = "<|begin_of_text|>";
    for (const ChatMessage& m : messages) {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    }
    return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  if (tmpl.find("<start_of_turn>") != std::string::npos) {
    // Gemma: no system role (its text opens the first user turn), the assistant is "model".
    out = "<bos>";
    std::string pending_system;
    for (const ChatMessage& m : messages) {
      if (m.role == "system") {
        pending_system = m.content + "\n\n";
        continue;
      }
      const std::string role = m.role == "assistant" ? "model" : m.role;
      out += "<start_of_turn>" + role + "\n" + pending_system + m.content + "<end_of_turn>\n";
      pending_system.clear();
    }
    return out + "<start_of_turn>model\n";
  }
  if (tmpl.find("<|user|>") != std::string::npos) {
    for (const ChatMessage& m : messages) out += "<|" + m.role + "|>\n" + m.content + "</s>\n";
    return out + "<|assistant|>\n";
  }
  // No template (base models): the turns' texts, one paragraph each.
  for (const ChatMessage& m : messages) out += (out.empty() ? "" : "\n\n") + m.content;
  return out;
}

}  // namespace qs
