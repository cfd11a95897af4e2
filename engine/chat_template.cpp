// Chat templates for instruct models. Rather than a Jinja interpreter, the known template families are
// recognised by their markers (ChatML, Llama 3, Zephyr/TinyLlama) and rendered directly.
#include <string>

#include "engine/engine.h"

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
  const std::string& tmpl = model().config().chat_template;
  if (tmpl.find("<|im_start|>") != std::string::npos) {
    const std::string sys = system.empty() ? chatml_default_system(tmpl) : system;
    std::string out;
    if (!sys.empty()) out += "<|im_start|>system\n" + sys + "<|im_end|>\n";
    out += "<|im_start|>user\n" + user_message + "<|im_end|>\n<|im_start|>assistant\n";
    return out;
  }
  if (tmpl.find("<|start_header_id|>") != std::string::npos) {
    std::string out = "<|begin_of_text|>";
    if (!system.empty()) out += "<|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>";
    out += "<|start_header_id|>user<|end_header_id|>\n\n" + user_message +
           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  if (tmpl.find("<|user|>") != std::string::npos) {
    std::string out;
    if (!system.empty()) out += "<|system|>\n" + system + "</s>\n";
    out += "<|user|>\n" + user_message + "</s>\n<|assistant|>\n";
    return out;
  }
  // No template (base models): the message as it is.
  return system.empty() ? user_message : system + "\n\n" + user_message;
}

}  // namespace qs
