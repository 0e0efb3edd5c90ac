#include "slu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

namespace slu {
namespace {
#include "unicode_tables.inc"

std::ifstream OpenOrThrow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return in;
}

std::string StripEol(std::string line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return line;
}

// Non-blank lines (labels), as utils.read_lines.
std::vector<std::string> ReadLabels(const std::string& path) {
  std::ifstream in = OpenOrThrow(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    line = StripEol(line);
    if (!IsBlank(DecodeUtf8(line))) out.push_back(line);
  }
  return out;
}

// The one integer field inference_config.json must have; a full JSON parser is not worth a dependency.
int ReadIntField(const std::string& path, const std::string& key) {
  std::ifstream in = OpenOrThrow(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t at = text.find("\"" + key + "\"");
  if (at == std::string::npos) throw std::runtime_error(path + ": no \"" + key + "\" field");
  at = text.find(':', at);
  return std::stoi(text.substr(at + 1));
}

std::string FoldChar(char32_t c) {
  const FoldEntry* end = kFold + sizeof(kFold) / sizeof(kFold[0]);
  const FoldEntry* it = std::lower_bound(kFold, end, c, [](const FoldEntry& e, char32_t v) { return e.code_point < v; });
  if (it != end && it->code_point == c) return it->folded_utf8;
  return EncodeUtf8(std::u32string(1, c));
}

std::string FormatConfidence(float p) {  // Python: round(p, 4) printed by json (shortest repr)
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", static_cast<double>(p));
  std::string s(buf);
  while (s.back() == '0' && s[s.size() - 2] != '.') s.pop_back();
  return s;
}
}  // namespace

std::u32string DecodeUtf8(const std::string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    unsigned char b = text[i];
    int extra = b < 0x80 ? 0 : (b >> 5) == 0x6 ? 1 : (b >> 4) == 0xe ? 2 : (b >> 3) == 0x1e ? 3 : -1;
    if (extra < 0 || i + extra >= text.size()) throw std::invalid_argument("invalid UTF-8");
    char32_t c = extra == 0 ? b : b & (0x3f >> extra);
    for (int k = 1; k <= extra; ++k) {
      unsigned char cont = text[i + k];
      if ((cont >> 6) != 0x2) throw std::invalid_argument("invalid UTF-8");
      c = (c << 6) | (cont & 0x3f);
    }
    static const char32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (c < kMin[extra] || c > 0x10ffff || (c >= 0xd800 && c < 0xe000)) throw std::invalid_argument("invalid UTF-8");
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

bool IsSpace(char32_t c) {
  return std::binary_search(std::begin(kWhitespace), std::end(kWhitespace), static_cast<uint32_t>(c));
}

bool IsBlank(const std::u32string& text) { return std::all_of(text.begin(), text.end(), IsSpace); }

Model::Model(const std::string& model_dir) {
  // vocab.txt: one token per line, kept verbatim (a token may be whitespace-only).
  std::ifstream vocab = OpenOrThrow(model_dir + "/vocab.txt");
  int id = 0;
  for (std::string line; std::getline(vocab, line); ++id) token_to_id_.emplace(StripEol(line), id);
  auto special = [&](const char* token) {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) throw std::runtime_error(model_dir + "/vocab.txt: lacks the special token " + token);
    return it->second;
  };
  pad_id_ = special("[PAD]"), cls_id_ = special("[CLS]"), sep_id_ = special("[SEP]"), unk_id_ = special("[UNK]");
  intents_ = ReadLabels(model_dir + "/intent_label.txt");
  slot_tags_ = ReadLabels(model_dir + "/slot_label.txt");
  max_seq_length_ = ReadIntField(model_dir + "/inference_config.json", "max_seq_length");
  if (max_seq_length_ < 3) throw std::runtime_error(model_dir + "/inference_config.json: max_seq_length must be >= 3");
}

std::vector<int> Model::Tokenize(const std::u32string& text, std::vector<int>* offsets) const {
  std::vector<int> ids;
  for (size_t i = 0; i < text.size(); ++i) {
    if (IsSpace(text[i])) continue;
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
  // Intent from the first window (utils.merge_windows), softmax in float32 as numpy does.
  const size_t n_intents = intents_.size(), n_tags = slot_tags_.size();
  size_t best = std::max_element(intent_logits, intent_logits + n_intents) - intent_logits;
  float sum = 0;
  for (size_t k = 0; k < n_intents; ++k) sum += std::exp(intent_logits[k] - intent_logits[best]);
  const float confidence = 1.0f / sum;

  std::vector<std::string> tags;
  for (size_t w = 0; w < enc.windows.size(); ++w) {
    for (size_t t = 1; t + 1 < enc.windows[w].size(); ++t) {
      const float* row = slot_logits + (w * seq_len + t) * n_tags;
      tags.push_back(slot_tags_[std::max_element(row, row + n_tags) - row]);
    }
  }
  std::ostringstream json;
  json << "{\"text\": " << JsonString(EncodeUtf8(enc.text)) << ", \"intent\": " << JsonString(intents_[best])
       << ", \"confidence\": " << FormatConfidence(confidence) << ", \"slots\": [";
  std::vector<Span> spans = BioSpans(tags);
  for (size_t i = 0; i < spans.size(); ++i) {
    int first = enc.offsets[spans[i].start], last = enc.offsets[spans[i].end - 1];
    json << (i ? ", " : "") << "{\"slot\": " << JsonString(spans[i].type)
         << ", \"entity\": " << JsonString(EncodeUtf8(enc.text.substr(first, last - first + 1)))
         << ", \"pos\": [" << first << ", " << last << "]}";
  }
  json << "]}";
  return json.str();
}

std::string JsonString(const std::string& utf8) {
  std::string out = "\"";
  for (unsigned char c : utf8) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string ErrorJson(const std::string& utf8_text, const std::string& error) {
  return "{\"text\": " + JsonString(utf8_text) + ", \"error\": " + JsonString(error) + "}";
}

}  // namespace slu
