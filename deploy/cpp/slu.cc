#include "slu.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include "nlohmann/json.hpp"

namespace slu {

const std::vector<std::string> kFiles = {kGraphFile, kParamsFile, kVocabFile, kIntentLabelFile, kSlotLabelFile, kConfigFile};
const std::vector<std::string> kRequiredKeys = {
    "format_version", "max_seq_length", "max_utterance_tokens", "vocab_size", "special_tokens", "num_intents",
    "num_slot_tags", "slotless_intents", "inputs", "outputs", "onednn_int8", "model"};
const std::vector<std::string> kOutputRoles = {"intent_logits", "slot_logits"};

namespace {
#include "unicode_tables.inc"

using Json = nlohmann::ordered_json;  // keeps keys in insertion order, as Python's json.dumps

std::ifstream OpenOrThrow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return in;
}

std::string StripEol(std::string line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return line;
}

// Label lines with a visible character (utils.read_lines keeps the non-blank ones: the same for labels).
std::vector<std::string> ReadLabels(const std::string& path) {
  std::ifstream in = OpenOrThrow(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    line = StripEol(line);
    std::u32string text = DecodeUtf8(line);
    if (std::any_of(text.begin(), text.end(), CarriesToken)) out.push_back(line);
  }
  return out;
}

std::string FoldChar(char32_t c) {
  const FoldEntry* end = kFold + sizeof(kFold) / sizeof(kFold[0]);
  const FoldEntry* it = std::lower_bound(kFold, end, c, [](const FoldEntry& e, char32_t v) { return e.code_point < v; });
  if (it != end && it->code_point == c) return it->folded_utf8;
  return EncodeUtf8(std::u32string(1, c));
}

}  // namespace

std::u32string DecodeUtf8(const std::string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    unsigned char b = text[i];
    int extra = b < 0x80 ? 0 : (b >> 5) == 0x6 ? 1 : (b >> 4) == 0xe ? 2 : (b >> 3) == 0x1e ? 3 : -1;
    if (extra < 0 || i + extra >= text.size()) throw std::invalid_argument(kInvalidUtf8);
    char32_t c = extra == 0 ? b : b & (0x3f >> extra);
    for (int k = 1; k <= extra; ++k) {
      unsigned char cont = text[i + k];
      if ((cont >> 6) != 0x2) throw std::invalid_argument(kInvalidUtf8);
      c = (c << 6) | (cont & 0x3f);
    }
    static const char32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (c < kMin[extra] || c > 0x10ffff || (c >= 0xd800 && c < 0xe000)) throw std::invalid_argument(kInvalidUtf8);
    out.push_back(c);
    i += extra + 1;
  }
  return out;
}

std::string EncodeUtf8(const std::u32string& text) {
  std::string out;
  for (char32_t c : text) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xc0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xe0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    }
  }
  return out;
}

bool CarriesToken(char32_t c) {
  return !std::binary_search(std::begin(kNoToken), std::end(kNoToken), static_cast<uint32_t>(c));
}

std::string ContractJson() {
  Json contract = {{"format_version", kFormatVersion}, {"files", kFiles}, {"required_keys", kRequiredKeys},
                   {"output_roles", kOutputRoles}, {"empty_utterance", kEmptyUtterance}, {"invalid_utf8", kInvalidUtf8}, {"too_long_error", TooLongError(600, 512)}};
  return contract.dump();
}

std::string TooLongError(size_t num_tokens, size_t limit) {
  return "utterance too long: " + std::to_string(num_tokens) + " tokens (at most " + std::to_string(limit) + ")";
}

Model::Model(const std::string& model_dir) {
  for (const std::string& name : kFiles) OpenOrThrow(model_dir + "/" + name);
  graph_path_ = model_dir + "/" + kGraphFile;
  const std::string config_path = model_dir + "/" + kConfigFile;
  auto fail = [&](const std::string& file, const std::string& problem) { throw std::runtime_error(model_dir + "/" + file + ": " + problem); };
  Json config;
  try {
    std::ifstream in = OpenOrThrow(config_path);
    config = Json::parse(in);
  } catch (const Json::exception& e) {
    fail(kConfigFile, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!config.is_object() || !config.contains("format_version") || config["format_version"] != kFormatVersion)
    fail(kConfigFile, "format_version " + (config.is_object() && config.contains("format_version") ? config["format_version"].dump() : "missing") +
                          "; this build reads format_version " + std::to_string(kFormatVersion) + " (re-export the model)");
  for (const std::string& key : kRequiredKeys)
    if (!config.contains(key)) fail(kConfigFile, "lacks " + key);
  for (const char* key : {"max_seq_length", "max_utterance_tokens", "vocab_size", "num_intents", "num_slot_tags"})
    if (!config[key].is_number_integer()) fail(kConfigFile, std::string(key) + " must be an integer, not " + config[key].dump());
  try {
    max_seq_length_ = config["max_seq_length"].get<int>();
    max_utterance_tokens_ = config["max_utterance_tokens"].get<size_t>();
    std::vector<std::string> roles;
    for (const Json& output : config["outputs"]) roles.push_back(output.at("role").get<std::string>());
    if (roles != kOutputRoles) fail(kConfigFile, "outputs " + Json(roles).dump() + ", the contract wants " + Json(kOutputRoles).dump());

    // vocab.txt: one token per line, kept verbatim (a token may be whitespace-only).
    std::ifstream vocab = OpenOrThrow(model_dir + "/" + kVocabFile);
    int id = 0;
    for (std::string line; std::getline(vocab, line); ++id)
      if (!token_to_id_.emplace(StripEol(line), id).second) fail(kVocabFile, "repeated token " + Json(StripEol(line)).dump());
    if (id != config["vocab_size"].get<int>())
      fail(kVocabFile, std::to_string(id) + " tokens, " + kConfigFile + " says " + config["vocab_size"].dump());
    auto special = [&](const char* key) {
      const std::string token = config["special_tokens"].at(key).get<std::string>();
      auto it = token_to_id_.find(token);
      if (it == token_to_id_.end()) fail(kVocabFile, "lacks the special token " + token);
      return it->second;
    };
    pad_id_ = special("pad"), cls_id_ = special("cls"), sep_id_ = special("sep"), unk_id_ = special("unk");
    intents_ = ReadLabels(model_dir + "/" + kIntentLabelFile);
    slot_tags_ = ReadLabels(model_dir + "/" + kSlotLabelFile);
    if (intents_.size() != config["num_intents"].get<size_t>())
      fail(kIntentLabelFile, std::to_string(intents_.size()) + " intents, " + kConfigFile + " says " + config["num_intents"].dump());
    if (slot_tags_.size() != config["num_slot_tags"].get<size_t>())
      fail(kSlotLabelFile, std::to_string(slot_tags_.size()) + " slot tags, " + kConfigFile + " says " + config["num_slot_tags"].dump());
  } catch (const Json::exception& e) {
    fail(kConfigFile, std::string("unexpected content (") + e.what() + ")");
  }
  if (max_seq_length_ < 3) fail(kConfigFile, "max_seq_length must be >= 3");
  if (max_utterance_tokens_ < 1) fail(kConfigFile, "max_utterance_tokens must be >= 1");
}

std::string Model::Check(const Encoded& enc) const {
  if (enc.offsets.empty()) return kEmptyUtterance;
  if (enc.offsets.size() > max_utterance_tokens_) return TooLongError(enc.offsets.size(), max_utterance_tokens_);
  return "";
}

std::vector<int> Model::Tokenize(const std::u32string& text, std::vector<int>* offsets) const {
  std::vector<int> ids;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!CarriesToken(text[i])) continue;
    auto it = token_to_id_.find(FoldChar(text[i]));
    ids.push_back(it == token_to_id_.end() ? unk_id_ : it->second);
    offsets->push_back(static_cast<int>(i));
  }
  return ids;
}

Encoded Model::Encode(const std::string& utf8_text) const {
  Encoded enc;
  enc.text = DecodeUtf8(utf8_text);
  std::vector<int> ids = Tokenize(enc.text, &enc.offsets);
  const size_t window = max_seq_length_ - 2;
  for (size_t s = 0; s < std::max<size_t>(ids.size(), 1); s += window) {  // utils.window_bounds
    std::vector<int64_t> row{cls_id_};
    row.insert(row.end(), ids.begin() + s, ids.begin() + std::min(s + window, ids.size()));
    row.push_back(sep_id_);
    enc.windows.push_back(row);
  }
  return enc;
}

std::vector<int64_t> Model::PadWindows(const Encoded& enc, size_t* seq_len) const {
  *seq_len = 0;
  for (const auto& w : enc.windows) *seq_len = std::max(*seq_len, w.size());
  std::vector<int64_t> ids(enc.windows.size() * *seq_len, pad_id_);
  for (size_t w = 0; w < enc.windows.size(); ++w) std::copy(enc.windows[w].begin(), enc.windows[w].end(), ids.begin() + w * *seq_len);
  return ids;
}

std::vector<Span> BioSpans(const std::vector<std::string>& tags) {
  std::vector<Span> spans;
  bool open = false;
  Span current{"", 0, 0};
  for (size_t i = 0; i <= tags.size(); ++i) {
    const std::string tag = i < tags.size() ? tags[i] : "O";
    std::string prefix = tag.substr(0, 2), kind;
    if (prefix == "B-" || prefix == "I-") {
      kind = tag.substr(2);
    } else {
      prefix.clear();
    }
    if (open && (prefix != "I-" || kind != current.type)) {
      current.end = static_cast<int>(i);
      spans.push_back(current);
      open = false;
    }
    if (prefix == "B-" || (prefix == "I-" && !open)) {
      current = Span{kind, static_cast<int>(i), 0};
      open = true;
    }
  }
  return spans;
}

std::string Model::Describe(const Encoded& enc, const float* intent_logits, const float* slot_logits, int seq_len) const {
  // Intent from the first window (predictor.merge_windows), softmax in float32 as numpy does.
  const size_t n_intents = intents_.size(), n_tags = slot_tags_.size();
  size_t best = std::max_element(intent_logits, intent_logits + n_intents) - intent_logits;
  float sum = 0;
  for (size_t k = 0; k < n_intents; ++k) sum += std::exp(intent_logits[k] - intent_logits[best]);
  const double confidence = std::round(static_cast<double>(1.0f / sum) * 1e4) / 1e4;  // Python: round(p, 4)

  std::vector<std::string> tags;
  for (size_t w = 0; w < enc.windows.size(); ++w) {
    for (size_t t = 1; t + 1 < enc.windows[w].size(); ++t) {
      const float* row = slot_logits + (w * seq_len + t) * n_tags;
      tags.push_back(slot_tags_[std::max_element(row, row + n_tags) - row]);
    }
  }
  Json slots = Json::array();
  for (const Span& span : BioSpans(tags)) {
    int first = enc.offsets[span.start], last = enc.offsets[span.end - 1];
    slots.push_back({{"slot", span.type}, {"entity", EncodeUtf8(enc.text.substr(first, last - first + 1))}, {"pos", {first, last}}});
  }
  Json record = {{"text", EncodeUtf8(enc.text)}, {"intent", intents_[best]}, {"confidence", confidence}, {"slots", slots}};
  return record.dump();
}

std::string LineErrorJson(size_t line, const std::string& error) { return Json({{"line", line}, {"error", error}}).dump(); }

std::string ErrorJson(const std::string& utf8_text, const std::string& error) {
  return Json({{"text", utf8_text}, {"error", error}}).dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace slu
