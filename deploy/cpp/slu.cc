#include "slu.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"

namespace slu {

const std::vector<std::string> kFiles = {kGraphFile,     kParamsFile,    kVocabFile,  kIntentLabelFile, kSlotLabelFile,
                                         kCatalogueFile, kPinyinFile,    kConfigFile, kManifestFile};
const std::vector<std::string> kRequiredKeys = {
    "format_version", "max_seq_length", "context_turns", "max_context_tokens", "max_utterance_tokens", "vocab_size",
    "special_tokens", "num_intents", "num_slot_tags", "intent_slot_types", "slot_transitions", "calibration", "inputs", "outputs", "onednn_int8", "model"};
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

// SHA-256 (FIPS 180-4) of a file's bytes, hex: the digests of manifest.json (export_format.check_manifest).
std::string Sha256Hex(const std::string& data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
      0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
      0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
      0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
      0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
      0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  std::string msg = data;
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg += static_cast<char>(0x80);
  while (msg.size() % 64 != 56) msg += '\0';
  for (int i = 7; i >= 0; --i) msg += static_cast<char>((bits >> (8 * i)) & 0xff);
  for (size_t block = 0; block < msg.size(); block += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(uint8_t(msg[block + 4 * i])) << 24) | (uint32_t(uint8_t(msg[block + 4 * i + 1])) << 16) |
             (uint32_t(uint8_t(msg[block + 4 * i + 2])) << 8) | uint32_t(uint8_t(msg[block + 4 * i + 3]));
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (uint32_t v : h)
    for (int i = 28; i >= 0; i -= 4) out += hex[(v >> i) & 0xf];
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in = OpenOrThrow(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Label lines with a visible character (utils.read_lines keeps the non-blank ones: the same for labels).
// Repeated labels are refused, as task.LabelMaps does ("duplicate intent labels [...]").
std::vector<std::string> ReadLabels(const std::string& path, const std::string& kind) {
  std::ifstream in = OpenOrThrow(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    line = StripEol(line);
    std::u32string text = DecodeUtf8(line);
    if (std::any_of(text.begin(), text.end(), CarriesToken)) out.push_back(line);
  }
  std::set<std::string> seen, repeated;
  for (const std::string& label : out)
    if (!seen.insert(label).second) repeated.insert(label);
  if (!repeated.empty()) {
    std::string list = "[";
    for (const std::string& label : repeated) list += (list.size() > 1 ? ", '" : "'") + label + "'";
    throw std::runtime_error(path + ": duplicate " + kind + " labels " + list + "]");
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

std::vector<std::string> AppFiles() {
  std::vector<std::string> files = {kLiteModelFile};
  for (const std::string& name : kFiles)
    if (name != kParamsFile) files.push_back(name);
  return files;
}

std::string ContractJson() {
  Json contract = {{"format_version", kFormatVersion}, {"files", kFiles}, {"app_files", AppFiles()}, {"required_keys", kRequiredKeys},
                   {"output_roles", kOutputRoles}, {"onnx_files", {{"fp32", kOnnxFile}, {"int8", kOnnxInt8File}}}, {"onnx_source_key", kOnnxSourceKey},
                   {"empty_utterance", kEmptyUtterance}, {"invalid_utf8", kInvalidUtf8}, {"not_a_turn", kNotATurn}, {"too_long_error", TooLongError(600, 512)}};
  return contract.dump();
}

std::string TooLongError(size_t num_tokens, size_t limit) {
  return "utterance too long: " + std::to_string(num_tokens) + " tokens (at most " + std::to_string(limit) + ")";
}

namespace {

// The decoding keys of inference_config.json, checked; `fail(file, problem)` throws.
template <typename Fail>
Decoding ReadDecoding(const Json& config, const std::vector<std::string>& intents, const std::vector<std::string>& slot_tags,
                      const Fail& fail) {
  Decoding d;
  // calibration: exactly the keys of decoding.Calibration, positive temperatures
  const Json& calibration = config["calibration"];
  if (!calibration.is_object() || calibration.size() != 3 || !calibration.contains("fitted_on"))
    fail(kConfigFile, "calibration " + calibration.dump() + " must hold exactly [fitted_on, intent_temperature, slot_temperature]");
  for (const char* key : {"intent_temperature", "slot_temperature"}) {
    if (!calibration.contains(key) || !calibration[key].is_number() || !(calibration[key].get<double>() > 0) ||
        !std::isfinite(calibration[key].get<double>()))
      fail(kConfigFile, std::string("calibration ") + key + " must be a positive number, not " + (calibration.contains(key) ? calibration[key].dump() : "missing"));
  }
  d.intent_temperature = calibration["intent_temperature"].get<double>();
  d.slot_temperature = calibration["slot_temperature"].get<double>();

  // slot_transitions: null or [tags x tags] numbers
  const size_t T = slot_tags.size();
  const Json& transitions = config["slot_transitions"];
  if (!transitions.is_null()) {
    bool ok = transitions.is_array() && transitions.size() == T;
    for (size_t p = 0; ok && p < T; ++p) {
      ok = transitions[p].is_array() && transitions[p].size() == T;
      for (size_t t = 0; ok && t < T; ++t) ok = transitions[p][t].is_number() && std::isfinite(transitions[p][t].get<double>());
    }
    if (!ok) fail(kConfigFile, "slot_transitions must be null or " + std::to_string(T) + " rows of " + std::to_string(T) + " finite numbers");
    for (size_t p = 0; p < T; ++p)
      for (size_t t = 0; t < T; ++t) d.transitions.push_back(transitions[p][t].get<double>());
  }

  // decoding.SlotConstraints: BIO masks and the tags of each intent's slot types
  std::vector<std::string> kind(T);
  std::set<std::string> known_types;
  for (size_t t = 0; t < T; ++t) {
    const std::string prefix = slot_tags[t].substr(0, 2);
    if (prefix == "B-" || prefix == "I-") kind[t] = slot_tags[t].substr(2), known_types.insert(kind[t]);
  }
  auto inside = [&](size_t t) { return slot_tags[t].rfind("I-", 0) == 0; };
  auto usable = [&](size_t t) { return slot_tags[t] != "PAD"; };
  for (size_t t = 0; t < T; ++t) d.start_ok.push_back(usable(t) && !inside(t));
  for (size_t p = 0; p < T; ++p)
    for (size_t t = 0; t < T; ++t) d.transition_ok.push_back(usable(t) && (!inside(t) || (!kind[p].empty() && kind[p] == kind[t])));
  const Json& table = config["intent_slot_types"];
  if (!table.is_object() || table.size() != intents.size())
    fail(kConfigFile, "intent_slot_types must name every intent label once");
  for (const std::string& intent : intents) {
    if (!table.contains(intent) || !table[intent].is_array()) fail(kConfigFile, "intent_slot_types must name every intent label once");
    std::set<std::string> types;
    for (const Json& type : table[intent]) {
      if (!type.is_string() || !known_types.count(type.get<std::string>()))
        fail(kConfigFile, "intent_slot_types holds slot types [" + type.dump() + "] that are not in the slot labels");
      types.insert(type.get<std::string>());
    }
    std::vector<char> allowed(T);
    for (size_t t = 0; t < T; ++t) allowed[t] = usable(t) && (slot_tags[t] == "O" || types.count(kind[t]));
    d.intent_tags.push_back(allowed);
  }
  PrepareTables(&d);
  for (size_t t = 0; t < T; ++t) {
    auto it = std::find(slot_tags.begin(), slot_tags.end(), "I-" + kind[t]);
    d.inside_tag.push_back(kind[t].empty() || it == slot_tags.end() ? -1 : static_cast<int>(it - slot_tags.begin()));
  }
  return d;
}

// Paddle's ProgramDesc at the protobuf wire level (export_format.lookup_tables, same field numbers):
// the ids variable and the table shape of every lookup_table_v2 of the first block.
struct WireField {
  uint64_t number = 0, varint = 0;
  std::string bytes;
};

uint64_t ReadVarint(const std::string& buf, size_t* i) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*i >= buf.size()) throw std::invalid_argument("message cut short");
    const unsigned char byte = buf[(*i)++];
    value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (byte < 0x80) return value;
  }
  throw std::invalid_argument("varint too long");
}

std::vector<WireField> WireFields(const std::string& buf) {
  std::vector<WireField> fields;
  for (size_t i = 0; i < buf.size();) {
    const uint64_t key = ReadVarint(buf, &i);
    WireField field;
    field.number = key >> 3;
    switch (key & 7) {
      case 0: field.varint = ReadVarint(buf, &i); break;
      case 2: {
        const uint64_t size = ReadVarint(buf, &i);
        if (size > buf.size() - i) throw std::invalid_argument("message cut short");
        field.bytes = buf.substr(i, size), i += size;
        break;
      }
      case 1: i += 8; break;
      case 5: i += 4; break;
      default: throw std::invalid_argument("wire type " + std::to_string(key & 7));
    }
    if (i > buf.size()) throw std::invalid_argument("message cut short");
    fields.push_back(std::move(field));
  }
  return fields;
}

std::string FirstBytes(const std::string& buf, uint64_t number) {
  for (WireField& f : WireFields(buf))
    if (f.number == number) return f.bytes;
  return "";
}

std::vector<int64_t> TensorDims(const std::string& tensor_desc) {
  std::vector<int64_t> dims;
  for (const WireField& f : WireFields(tensor_desc)) {
    if (f.number != 2) continue;
    if (f.bytes.empty()) {
      dims.push_back(static_cast<int64_t>(f.varint));
    } else {
      for (size_t i = 0; i < f.bytes.size();) dims.push_back(static_cast<int64_t>(ReadVarint(f.bytes, &i)));
    }
  }
  return dims;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> LookupTables(const std::string& graph_path) {
  const std::string program = ReadFile(graph_path);
  try {
    std::unordered_map<std::string, std::vector<int64_t>> shapes;
    std::vector<std::pair<std::string, std::string>> lookups;  // (ids, table)
    for (const WireField& f : WireFields(FirstBytes(program, 1))) {
      if (f.number == 3) {
        shapes[FirstBytes(f.bytes, 1)] = TensorDims(FirstBytes(FirstBytes(FirstBytes(f.bytes, 2), 3), 1));
      } else if (f.number == 4 && FirstBytes(f.bytes, 3) == "lookup_table_v2") {
        std::string ids, table;
        for (const WireField& var : WireFields(f.bytes)) {
          if (var.number != 1) continue;
          const std::string parameter = FirstBytes(var.bytes, 1), argument = FirstBytes(var.bytes, 2);
          if (parameter == "Ids") ids = argument;
          if (parameter == "W") table = argument;
        }
        lookups.emplace_back(ids, table);
      }
    }
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    for (const auto& [ids, table] : lookups) {
      auto it = shapes.find(table);
      if (it == shapes.end()) throw std::invalid_argument("no variable " + table);
      out.emplace_back(ids, it->second);
    }
    return out;
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(graph_path + ": not a readable Paddle program (" + e.what() + ")");
  }
}

// export_format.check_weights: model.pdiparams (Paddle's save_combine stream: per tensor uint32
// version, uint64 LoD levels with their bytes, uint32 tensor version, int32 TensorDesc size, the
// TensorDesc, the raw data) whole, every floating-point value finite.
void CheckWeights(const std::string& params_path) {
  const std::string data = ReadFile(params_path);
  size_t i = 0, count = 0;
  auto take = [&](uint64_t n) {
    if (n > data.size() - i)
      throw std::runtime_error(params_path + ": not a complete Paddle weights file (cut short: tensor " + std::to_string(count + 1) +
                               " needs bytes " + std::to_string(i) + ".." + std::to_string(i + n) + ", the file has " +
                               std::to_string(data.size()) + ")");
    i += n;
    return data.data() + i - n;
  };
  auto uint = [&](int bytes) {
    const char* p = take(bytes);
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | uint8_t(p[k]);
    return v;
  };
  struct Bad { size_t tensor; std::string dtype; std::vector<int64_t> dims; size_t count, first; };
  std::vector<Bad> bad;
  while (i < data.size()) {
    if (uint(4) != 0) throw std::runtime_error(params_path + ": not a complete Paddle weights file (tensor " + std::to_string(count + 1) + ": unknown version)");
    for (uint64_t level = uint(8); level > 0; --level) take(uint(8));
    if (uint(4) != 0) throw std::runtime_error(params_path + ": not a complete Paddle weights file (tensor " + std::to_string(count + 1) + ": unknown tensor version)");
    const uint64_t desc_size = uint(4);
    const std::string desc(take(desc_size), desc_size);
    uint64_t code = 0;
    bool has_code = false;
    for (const WireField& f : WireFields(desc))
      if (f.number == 1 && !has_code) code = f.varint, has_code = true;
    static const std::unordered_map<uint64_t, std::pair<std::string, int>> kTypes = {
        {0, {"bool", 1}}, {1, {"int16", 2}}, {2, {"int32", 4}}, {3, {"int64", 8}}, {4, {"float16", 2}}, {5, {"float32", 4}},
        {6, {"float64", 8}}, {20, {"uint8", 1}}, {21, {"int8", 1}}, {22, {"bfloat16", 2}}};
    auto type = kTypes.find(code);
    if (!has_code || type == kTypes.end())
      throw std::runtime_error(params_path + ": not a complete Paddle weights file (unknown data type " + std::to_string(code) + ")");
    const std::vector<int64_t> dims = TensorDims(desc);
    uint64_t numel = 1;
    for (int64_t d : dims) {
      if (d < 0) throw std::runtime_error(params_path + ": not a complete Paddle weights file (tensor " + std::to_string(count + 1) + ": negative dimension)");
      numel *= static_cast<uint64_t>(d);
    }
    const char* raw = take(numel * type->second.second);
    ++count;
    size_t n_bad = 0, first = 0;
    for (uint64_t k = 0; k < numel && (code == 5 || code == 6 || code == 22); ++k) {
      double v;
      if (code == 5) { float f; std::memcpy(&f, raw + 4 * k, 4); v = f; }
      else if (code == 6) std::memcpy(&v, raw + 8 * k, 8);
      else { uint32_t u = uint32_t(uint8_t(raw[2 * k])) << 16 | uint32_t(uint8_t(raw[2 * k + 1])) << 24; float f; std::memcpy(&f, &u, 4); v = f; }
      if (!std::isfinite(v) && n_bad++ == 0) first = k;
    }
    if (code == 4)  // float16: exponent bits all ones
      for (uint64_t k = 0; k < numel; ++k)
        if (((uint8_t(raw[2 * k + 1]) >> 2) & 0x1f) == 0x1f && n_bad++ == 0) first = k;
    if (n_bad) bad.push_back({count, type->second.first, dims, n_bad, first});
  }
  if (!bad.empty()) {
    const Bad& b = bad.front();
    std::string dims = "[";
    for (size_t k = 0; k < b.dims.size(); ++k) dims += (k ? ", " : "") + std::to_string(b.dims[k]);
    throw std::runtime_error(params_path + ": tensor " + std::to_string(b.tensor) + " of " + std::to_string(count) + " (" + b.dtype + " " + dims +
                             "]) holds " + std::to_string(b.count) + " value(s) that are not finite (first at flat index " +
                             std::to_string(b.first) + "): the weights are damaged or training diverged");
  }
}

// export_format.check_manifest: every file of `names` as manifest.json recorded it; returns the
// recorded sha256 by file name.
std::map<std::string, std::string> CheckManifest(const std::string& model_dir, std::vector<std::string> names) {
  const std::string path = model_dir + "/" + kManifestFile;
  std::map<std::string, std::pair<uint64_t, std::string>> recorded;
  try {
    const Json manifest = Json::parse(ReadFile(path));
    for (const auto& [name, entry] : manifest.at("files").items())
      recorded[name] = {entry.at("bytes").get<uint64_t>(), entry.at("sha256").get<std::string>()};
  } catch (const Json::exception& e) {
    throw std::runtime_error(path + ": not a manifest (" + e.what() + "); re-export the model");
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> listed;
  for (const auto& entry : recorded) listed.push_back(entry.first);
  if (listed != names) throw std::runtime_error(path + ": lists " + Json(listed).dump() + "; the directory's files are " + Json(names).dump());
  for (const std::string& name : names) {
    const std::string content = ReadFile(model_dir + "/" + name);
    if (content.size() != recorded[name].first)
      throw std::runtime_error(model_dir + "/" + name + ": " + std::to_string(content.size()) + " bytes, " + kManifestFile + " says " +
                               std::to_string(recorded[name].first) + ": the file was cut, extended or replaced after export");
    if (Sha256Hex(content) != recorded[name].second)
      throw std::runtime_error(model_dir + "/" + name + ": its content differs from " + kManifestFile +
                               " (sha256): the file was changed or replaced after export (damaged, or taken from another model)");
  }
  std::map<std::string, std::string> sha256;
  for (const auto& [name, entry] : recorded) sha256[name] = entry.second;
  return sha256;
}

}  // namespace

// export_format.check_graph_tables: the word table has vocab_size rows; the largest other table
// (the position embeddings) covers max_seq_length + max_context_tokens.
void Model::CheckGraphTables() const {
  const auto tables = LookupTables(graph_path_);
  std::vector<int64_t> word, others;
  for (const auto& [ids, shape] : tables) {
    if (ids == "input_ids") {
      if (shape.size() == 2) word.push_back(shape[0]);
    } else if (!shape.empty()) {
      others.push_back(shape[0]);
    }
  }
  if (word.size() != 1)
    throw std::runtime_error(graph_path_ + ": expected one embedding lookup of input_ids, found " + std::to_string(word.size()));
  const int64_t vocab_size = static_cast<int64_t>(token_to_id_.size());
  if (word[0] != vocab_size)
    throw std::runtime_error(graph_path_ + ": the word embedding table has " + std::to_string(word[0]) + " rows but " + kVocabFile +
                             " and " + kConfigFile + " give " + std::to_string(vocab_size) +
                             " tokens: the graph and the vocabulary come from different models");
  const int64_t row = max_seq_length_ + max_context_tokens_;
  const int64_t positions = others.empty() ? row : *std::max_element(others.begin(), others.end());
  if (positions < row)
    throw std::runtime_error(model_dir_ + "/" + kConfigFile + ": max_seq_length " + std::to_string(max_seq_length_) + " + max_context_tokens " +
                             std::to_string(max_context_tokens_) + " = " + std::to_string(row) + " tokens per row, but " + kGraphFile +
                             " has " + std::to_string(positions) + " positions");
}

std::string ValueKey(const std::u32string& text) {
  std::string key;
  for (char32_t c : text)
    if (CarriesToken(c)) key += FoldChar(c);
  return key;
}

std::string Digits(const std::u32string& text) {
  static const std::map<std::string, char> kDigitWords = {
      {"零", '0'}, {"〇", '0'}, {"一", '1'}, {"幺", '1'}, {"二", '2'}, {"两", '2'}, {"三", '3'},
      {"四", '4'}, {"五", '5'}, {"六", '6'}, {"七", '7'}, {"八", '8'}, {"九", '9'}};
  static const std::u32string kSeparators = U"-\u2013\u2014\u00b7.()+/";  // values.DIGIT_SEPARATORS
  std::string out;
  for (char32_t c : text) {
    if (!CarriesToken(c)) continue;
    for (char32_t f : DecodeUtf8(FoldChar(c))) {
      const std::string ch = EncodeUtf8(std::u32string(1, f));
      if (f >= U'0' && f <= U'9') {
        out += static_cast<char>(f);
      } else if (kDigitWords.count(ch)) {
        out += kDigitWords.at(ch);
      } else if (kSeparators.find(f) == std::u32string::npos) {
        return "";
      }
    }
  }
  return out;
}

void Catalogue::Add(const std::string& slot_type, const std::string& value, const std::vector<std::string>& synonyms) {
  const std::string key = ValueKey(DecodeUtf8(value));
  auto add = [](std::vector<std::string>* values, const std::string& v) {
    if (std::find(values->begin(), values->end(), v) == values->end()) values->push_back(v);
  };
  sounds_built_ = false;
  add(&values_[slot_type][key], value);
  for (const std::string& synonym : synonyms) {
    const std::string synonym_key = ValueKey(DecodeUtf8(synonym));
    if (synonym_key != key) add(&synonyms_[slot_type][synonym_key], value);
  }
}

void Catalogue::Read(const std::string& path, const std::vector<std::string>& slot_types) {
  std::ifstream in = OpenOrThrow(path);
  size_t line_no = 0;
  auto visible = [](const Json& v) {
    if (!v.is_string()) return false;
    try {
      return !ValueKey(DecodeUtf8(v.get<std::string>())).empty();
    } catch (const std::invalid_argument&) {
      return false;
    }
  };
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    auto fail = [&](const std::string& problem) { throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " + problem); };
    line = StripEol(line);
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line = line.substr(3);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json entry = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (entry.is_discarded()) fail("not JSON");
    if (!entry.is_object() || !entry.contains("slot") || !entry["slot"].is_string() || entry["slot"].get<std::string>().empty())
      fail("an entry is an object with \"slot\" and either \"value\" (and optional \"synonyms\") or \"rule\"");
    const std::string slot = entry["slot"].get<std::string>();
    if (std::find(slot_types.begin(), slot_types.end(), slot) == slot_types.end()) {
      std::string names;
      for (const std::string& t : slot_types) names += (names.empty() ? "" : ", ") + t;
      fail("slot type '" + slot + "' is not one of the model's (" + names + ")");
    }
    if (entry.contains("rule")) {
      if (entry.size() != 2 || (entry["rule"] != "digits" && entry["rule"] != "pronunciation"))
        fail("a rule entry is {\"slot\", \"rule\"} with a rule of ['digits', 'pronunciation']");
      rules_[slot] = entry["rule"].get<std::string>();
      sounds_built_ = false;
      continue;
    }
    bool extra = false;
    for (const auto& item : entry.items()) extra |= item.key() != "slot" && item.key() != "value" && item.key() != "synonyms";
    if (extra || !entry.contains("value") || !visible(entry["value"]))
      fail("a value entry is {\"slot\", \"value\", \"synonyms\"} with a value of visible characters");
    std::vector<std::string> synonyms;
    if (entry.contains("synonyms")) {
      if (!entry["synonyms"].is_array()) fail("synonyms must be a list of strings of visible characters");
      for (const Json& synonym : entry["synonyms"]) {
        if (!visible(synonym)) fail("synonyms must be a list of strings of visible characters");
        synonyms.push_back(synonym.get<std::string>());
      }
    }
    Add(slot, entry["value"].get<std::string>(), synonyms);
  }
}

std::string Fuzzy(const std::string& syllable) {
  static const std::vector<std::pair<std::string, std::string>> kInitials = {{"zh", "z"}, {"ch", "c"}, {"sh", "s"}, {"n", "l"}};
  static const std::vector<std::pair<std::string, std::string>> kFinals = {
      {"iang", "ian"}, {"uang", "uan"}, {"ang", "an"}, {"eng", "en"}, {"ing", "in"}};
  std::string s = syllable;
  for (const auto& [a, b] : kInitials)
    if (s.compare(0, a.size(), a) == 0) {
      s = b + s.substr(a.size());
      break;
    }
  for (const auto& [a, b] : kFinals)
    if (s.size() >= a.size() && s.compare(s.size() - a.size(), a.size(), a) == 0) return s.substr(0, s.size() - a.size()) + b;
  return s;
}

void Catalogue::ReadPinyin(const std::string& path) {
  std::ifstream in = OpenOrThrow(path);
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const size_t tab = line.find('\t');
    std::vector<std::string> readings;
    bool ok = tab != std::string::npos;
    if (ok) {
      std::istringstream words(line.substr(tab + 1));
      for (std::string w; words >> w;) {
        ok &= std::all_of(w.begin(), w.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); });
        readings.push_back(w);
      }
      try {
        ok &= DecodeUtf8(line.substr(0, tab)).size() == 1 && !readings.empty();
      } catch (const std::invalid_argument&) {
        ok = false;
      }
    }
    if (!ok)  // values.read_pinyin's words
      throw std::runtime_error(path + ":" + std::to_string(line_no) +
                               ": expected a character, a tab and its readings (ASCII letters, space-separated)");
    pinyin_[line.substr(0, tab)] = readings;
  }
  sounds_built_ = false;
}

std::vector<Catalogue::Syllable> Catalogue::Syllables(const std::string& key) const {
  std::vector<Syllable> out;
  for (char32_t c : DecodeUtf8(key)) {
    const std::string ch = EncodeUtf8(std::u32string(1, c));
    auto it = pinyin_.find(ch);
    Syllable s;
    if (it == pinyin_.end()) {
      s.readings = s.folded = {ch};
    } else {
      s.readings = it->second;
      for (const std::string& r : it->second) {
        const std::string f = Fuzzy(r);
        if (std::find(s.folded.begin(), s.folded.end(), f) == s.folded.end()) s.folded.push_back(f);
      }
    }
    out.push_back(s);
  }
  return out;
}

namespace {
constexpr size_t kMinSoundSyllables = 2, kMinEditSyllables = 4;  // values.MIN_SOUND_SYLLABLES, MIN_EDIT_SYLLABLES

bool Intersect(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (const std::string& x : a)
    if (std::find(b.begin(), b.end(), x) != b.end()) return true;
  return false;
}
}  // namespace

std::vector<std::string> Catalogue::IndexKeys(const std::string& slot_type, const std::string& key) const {
  std::vector<std::string> first;
  for (const Syllable& s : Syllables(key)) first.push_back(s.folded.front());
  auto join = [](const std::vector<std::string>& parts, size_t skip) {
    std::string out;
    bool any = false;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i == skip) continue;
      out += (any ? " " : "") + parts[i];
      any = true;
    }
    return out;
  };
  std::set<std::string> variants = {join(first, first.size())};
  if (first.size() >= kMinEditSyllables)
    for (size_t i = 0; i < first.size(); ++i) variants.insert(join(first, i));
  std::vector<std::string> out;
  for (const std::string& v : variants) out.push_back(slot_type + "\x1f" + v);
  return out;
}

void Catalogue::BuildSoundIndex() const {
  sounds_.clear();
  for (const ByKey* table : {&values_, &synonyms_})
    for (const auto& [slot_type, by_key] : *table) {
      auto rule = rules_.find(slot_type);
      if (rule == rules_.end() || rule->second != "pronunciation") continue;
      for (const auto& [key, canonical] : by_key) {
        if (DecodeUtf8(key).size() < kMinSoundSyllables) continue;
        for (const std::string& index_key : IndexKeys(slot_type, key))
          for (const std::string& value : canonical) sounds_[index_key].emplace_back(value, key);
      }
    }
  sounds_built_ = true;
}

int Catalogue::SoundDistance(const std::string& key_a, const std::string& key_b) const {
  const std::vector<Syllable> a = Syllables(key_a), b = Syllables(key_b);
  std::vector<int> previous(b.size() + 1), row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = 2 * static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    row[0] = 2 * static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int sub = Intersect(a[i - 1].readings, b[j - 1].readings) ? 0 : Intersect(a[i - 1].folded, b[j - 1].folded) ? 1 : 2;
      row[j] = std::min({previous[j - 1] + sub, previous[j] + 2, row[j - 1] + 2});
    }
    std::swap(previous, row);
  }
  return previous[b.size()];
}

bool Catalogue::SoundMatch(const std::string& slot_type, const std::string& key, std::string* value) const {
  if (DecodeUtf8(key).size() < kMinSoundSyllables || pinyin_.empty()) return false;
  if (!sounds_built_) BuildSoundIndex();
  std::set<std::pair<std::string, std::string>> candidates;  // (canonical value, key heard as)
  for (const std::string& index_key : IndexKeys(slot_type, key)) {
    auto it = sounds_.find(index_key);
    if (it != sounds_.end()) candidates.insert(it->second.begin(), it->second.end());
  }
  int best = -1;
  std::set<std::string> best_values;
  for (const auto& [canonical, candidate] : candidates) {
    const int distance = SoundDistance(key, candidate);
    if (distance > static_cast<int>(DecodeUtf8(candidate).size() / 2)) continue;  // the bound: a half-unit per two syllables
    if (best < 0 || distance < best) {
      best = distance;
      best_values = {canonical};
    } else if (distance == best) {
      best_values.insert(canonical);
    }
  }
  if (best_values.size() != 1) return false;  // none close enough, or two values equally close
  *value = *best_values.begin();
  return true;
}

std::pair<std::string, std::string> Catalogue::Resolve(const std::string& slot_type, const std::u32string& heard) const {
  const std::string key = ValueKey(heard), text = EncodeUtf8(heard);
  for (const auto& [table, how] : {std::make_pair(&values_, "exact"), std::make_pair(&synonyms_, "catalogue")}) {
    auto by_type = table->find(slot_type);
    if (by_type == table->end()) continue;
    auto found = by_type->second.find(key);
    if (found == by_type->second.end() || found->second.empty()) continue;
    if (found->second.size() == 1) return {found->second.front(), how};
    return {text, "none"};  // one key, several values: ambiguous
  }
  auto rule = rules_.find(slot_type);
  if (rule != rules_.end() && rule->second == "pronunciation") {
    std::string value;
    if (SoundMatch(slot_type, key, &value)) return {value, "pronunciation"};
  }
  if (rule != rules_.end() && rule->second == "digits") {
    const std::string digits = Digits(heard);
    if (!digits.empty()) return {digits, "rule"};
  }
  return {text, "none"};
}

Model::Model(const std::string& model_dir, const std::string& weights_file) {
  // the app ships model.nb in place of model.pdiparams (deploy/android/convert.py)
  std::vector<std::string> files;
  for (const std::string& name : kFiles) files.push_back(name == kParamsFile ? weights_file : name);
  std::string missing;  // export_format.read's message
  for (const std::string& name : files)
    if (!std::ifstream(model_dir + "/" + name)) missing += (missing.empty() ? "" : ", ") + name;
  if (!missing.empty()) throw std::runtime_error(model_dir + ": missing " + missing);
  graph_path_ = model_dir + "/" + kGraphFile;
  model_dir_ = model_dir;
  const std::string config_path = model_dir + "/" + kConfigFile;
  auto fail = [&](const std::string& file, const std::string& problem) { throw std::runtime_error(model_dir + "/" + file + ": " + problem); };
  Json config;
  try {
    const std::string text = ReadFile(config_path);
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0)  // nlohmann skips a BOM; Python's json (and the contract) refuse it
      fail(kConfigFile, "not valid JSON (Unexpected UTF-8 BOM)");
    config = Json::parse(text);
  } catch (const Json::exception& e) {
    fail(kConfigFile, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!config.is_object() || !config.contains("format_version") || config["format_version"] != kFormatVersion)
    fail(kConfigFile, "format_version " + (config.is_object() && config.contains("format_version") ? config["format_version"].dump() : "missing") +
                          "; this build reads format_version " + std::to_string(kFormatVersion) + " (re-export the model)");
  for (const std::string& key : kRequiredKeys)
    if (!config.contains(key)) fail(kConfigFile, "lacks " + key);
  for (const char* key : {"max_seq_length", "context_turns", "max_context_tokens", "max_utterance_tokens", "vocab_size",
                          "num_intents", "num_slot_tags"})
    if (!config[key].is_number_integer()) fail(kConfigFile, std::string(key) + " must be an integer, not " + config[key].dump());
  try {
    max_seq_length_ = config["max_seq_length"].get<int>();
    context_turns_ = config["context_turns"].get<int>();
    max_context_tokens_ = config["max_context_tokens"].get<int>();
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
    intents_ = ReadLabels(model_dir + "/" + kIntentLabelFile, "intent");
    slot_tags_ = ReadLabels(model_dir + "/" + kSlotLabelFile, "slot");
    if (intents_.size() != config["num_intents"].get<size_t>())
      fail(kIntentLabelFile, std::to_string(intents_.size()) + " intents, " + kConfigFile + " says " + config["num_intents"].dump());
    if (slot_tags_.size() != config["num_slot_tags"].get<size_t>())
      fail(kSlotLabelFile, std::to_string(slot_tags_.size()) + " slot tags, " + kConfigFile + " says " + config["num_slot_tags"].dump());
    decoding_ = ReadDecoding(config, intents_, slot_tags_, fail);
    for (const std::string& tag : slot_tags_)
      if (tag.compare(0, 2, "B-") == 0) slot_types_.push_back(tag.substr(2));
    calibrated_ = !config["calibration"]["fitted_on"].is_null();
  } catch (const Json::exception& e) {
    fail(kConfigFile, std::string("unexpected content (") + e.what() + ")");
  }
  if (max_seq_length_ < 3) fail(kConfigFile, "max_seq_length must be >= 3");
  if (context_turns_ < 0 || (context_turns_ > 0) != (max_context_tokens_ >= 2))
    fail(kConfigFile, "context_turns " + std::to_string(context_turns_) + " with max_context_tokens " + std::to_string(max_context_tokens_) +
                          ": a context model needs room for one token and its [SEP] (>= 2), a model without context 0");
  if (max_utterance_tokens_ < 1) fail(kConfigFile, "max_utterance_tokens must be >= 1");
  catalogue_.Read(model_dir + "/" + kCatalogueFile, slot_types_);
  catalogue_.ReadPinyin(model_dir + "/" + kPinyinFile);
  CheckGraphTables();
  if (weights_file == kParamsFile) {
    try {
      CheckWeights(model_dir + "/" + kParamsFile);
    } catch (const std::invalid_argument& e) {  // a TensorDesc that is no protobuf message
      fail(kParamsFile, std::string("not a complete Paddle weights file (") + e.what() + ")");
    }
  }
  files.erase(std::find(files.begin(), files.end(), kManifestFile));
  recorded_sha256_ = CheckManifest(model_dir, files);
}

void CheckMinConfidence(double min_confidence) {
  if (!(min_confidence >= 0.0 && min_confidence <= 1.0)) {  // NaN included
    std::ostringstream value;
    value << min_confidence;
    throw std::invalid_argument("min_confidence " + value.str() + ": must lie in [0, 1]");
  }
}


void Model::CheckProbeOutputs(const std::vector<size_t>& intent_shape, const float* intent, const std::vector<size_t>& slot_shape,
                              const float* slots, const std::string& runtime) const {
  const std::string where = model_dir_ + " (" + runtime + "): ";
  auto dims = [](const std::vector<size_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
  };
  if (intent_shape != std::vector<size_t>{1, intents_.size()})
    throw std::runtime_error(where + kGraphFile + " gives " + std::to_string(intent_shape.empty() ? 0 : intent_shape.back()) +
                             " intent scores but " + kIntentLabelFile + " has " + std::to_string(intents_.size()) +
                             " labels: the graph and the label file come from different models");
  if (slot_shape != std::vector<size_t>{1, 3, slot_tags_.size()})
    throw std::runtime_error(where + kGraphFile + " gives slot scores of shape " + dims(slot_shape) + " for 3 tokens but " +
                             kSlotLabelFile + " has " + std::to_string(slot_tags_.size()) +
                             " tags: the graph and the label file come from different models");
  const bool finite = std::all_of(intent, intent + intents_.size(), [](float v) { return std::isfinite(v); }) &&
                      std::all_of(slots, slots + 3 * slot_tags_.size(), [](float v) { return std::isfinite(v); });
  if (!finite)
    throw std::runtime_error(where + "the graph's outputs are not finite (NaN or inf) on a probe input: " + kParamsFile +
                             " is damaged or not this graph's weights");
}

std::string Model::OnnxSourceStamp() const {
  auto sha = [&](const char* name) {
    const auto it = recorded_sha256_.find(name);
    if (it == recorded_sha256_.end()) throw std::runtime_error(model_dir_ + "/" + kManifestFile + ": records no " + name);
    return it->second;
  };
  return sha(kGraphFile) + " " + sha(kParamsFile);
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

std::vector<int64_t> Model::ContextIds(const std::vector<std::string>& history) const {
  std::vector<int64_t> ids;
  const size_t first = history.size() - std::min<size_t>(history.size(), context_turns_);
  for (size_t t = history.size(); t-- > first;) {  // nearest first
    std::vector<int> offsets;
    for (int id : Tokenize(DecodeUtf8(history[t]), &offsets)) ids.push_back(id);
    ids.push_back(sep_id_);
  }
  if (ids.size() > static_cast<size_t>(max_context_tokens_)) ids.resize(max_context_tokens_);  // the far end goes
  if (!ids.empty()) ids.back() = sep_id_;
  return ids;
}

Encoded Model::Encode(const std::string& utf8_text, const std::vector<std::string>& history) const {
  Encoded enc;
  enc.text = DecodeUtf8(utf8_text);
  std::vector<int> ids = Tokenize(enc.text, &enc.offsets);
  const std::vector<int64_t> context = ContextIds(history);
  // task.window_bounds: windows of max_seq_length-2 tokens, overlapping by half
  const size_t window = max_seq_length_ - 2, stride = std::max<size_t>(1, window / 2);
  for (size_t s = 0;; s += stride) {
    const size_t e = std::min(s + window, ids.size());
    std::vector<int64_t> row{cls_id_};
    row.insert(row.end(), ids.begin() + s, ids.begin() + e);
    row.push_back(sep_id_);
    row.insert(row.end(), context.begin(), context.end());
    enc.windows.push_back(row);
    enc.bounds.emplace_back(s, e);
    if (e >= ids.size()) break;
  }
  return enc;
}

void History::Add(const std::string& utf8_text) {
  texts_.push_back(utf8_text);  // callers add answered turns only (slu.h)
  if (texts_.size() > turns_) texts_.erase(texts_.begin(), texts_.begin() + (texts_.size() - turns_));
}

bool ParseTurn(const std::string& line, std::string* session_id, std::string* text, std::string* error) {
  try {
    DecodeUtf8(line);
  } catch (const std::invalid_argument&) {
    *error = kInvalidUtf8;
    return false;
  }
  Json turn = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!turn.is_object() || !turn.contains("session_id") || !turn["session_id"].is_string() || !turn.contains("text") ||
      !turn["text"].is_string()) {
    *error = kNotATurn;
    return false;
  }
  *session_id = turn["session_id"].get<std::string>();
  *text = turn["text"].get<std::string>();
  return true;
}

std::string WithSessionId(const std::string& session_id, const std::string& record_json) {
  return "{\"session_id\":" + Json(session_id).dump() + "," + record_json.substr(1);
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

std::vector<float> Model::MergeWindows(const Encoded& enc, const float* slot_logits, int seq_len) const {
  const size_t n_tags = slot_tags_.size();
  std::vector<float> out;
  for (size_t w = 0; w < enc.windows.size(); ++w) {
    // task.window_keeps: an overlap between two windows is split in the middle
    const size_t start = enc.bounds[w].first;
    const size_t keep = w == 0 ? start : (start + enc.bounds[w - 1].second + 1) / 2;
    const size_t end = w + 1 < enc.windows.size() ? (enc.bounds[w + 1].first + enc.bounds[w].second + 1) / 2 : enc.bounds[w].second;
    const float* row = slot_logits + (w * seq_len + 1) * n_tags;  // skip [CLS]
    out.insert(out.end(), row + (keep - start) * n_tags, row + (end - start) * n_tags);
  }
  return out;
}

namespace {

double Round4(double p) { return std::round(p * 1e4) / 1e4; }  // Python: round(p, 4)

}  // namespace

std::string Model::Describe(const Encoded& enc, const float* intent_logits, const std::vector<float>& token_logits,
                            double min_confidence) const {
  const size_t n_intents = intents_.size();
  const size_t intent = std::max_element(intent_logits, intent_logits + n_intents) - intent_logits;
  const std::vector<double> intent_probs = Softmax(intent_logits, n_intents, decoding_.intent_temperature);
  std::vector<size_t> ranking(n_intents);
  for (size_t k = 0; k < n_intents; ++k) ranking[k] = k;
  std::stable_sort(ranking.begin(), ranking.end(), [&](size_t a, size_t b) { return intent_probs[a] > intent_probs[b]; });
  Json ranked = Json::array();
  for (size_t k = 0; k < std::min<size_t>(3, n_intents); ++k)
    ranked.push_back({{"intent", intents_[ranking[k]]}, {"confidence", Round4(intent_probs[ranking[k]])}});

  const size_t n_tokens = token_logits.size() / slot_tags_.size();
  const std::vector<int> tag_ids = DecodeTags(decoding_, token_logits.data(), n_tokens, intent);
  std::vector<std::string> tags;
  for (int t : tag_ids) tags.push_back(slot_tags_[t]);
  double weakest = intent_probs[intent];
  Json slots = Json::array();
  const std::vector<Span> spans = BioSpans(tags);
  std::vector<std::pair<int, int>> bounds;
  for (const Span& span : spans) bounds.emplace_back(span.start, span.end);
  const std::vector<double> span_confidences = SpanConfidences(decoding_, token_logits.data(), tag_ids, bounds, intent, decoding_.slot_temperature);
  for (size_t k = 0; k < spans.size(); ++k) {
    const Span& span = spans[k];
    const double confidence = span_confidences[k];
    weakest = std::min(weakest, confidence);
    int first = enc.offsets[span.start], last = enc.offsets[span.end - 1];
    const std::u32string entity = enc.text.substr(first, last - first + 1);
    const auto [value, resolution] = catalogue_.Resolve(span.type, entity);
    slots.push_back({{"slot", span.type}, {"entity", EncodeUtf8(entity)}, {"pos", {first, last}}, {"confidence", Round4(confidence)},
                     {"value", value}, {"resolution", resolution}});
  }
  Json record = {{"text", EncodeUtf8(enc.text)}, {"intent", intents_[intent]}, {"confidence", Round4(intent_probs[intent])},
                 {"intent_ranking", ranked}, {"slots", slots}, {"fallback", !(weakest >= min_confidence)}};  // NaN falls back
  return record.dump();
}

std::string Model::ResolveJson(const std::string& slot_type, const std::string& utf8_text) const {
  const auto [value, resolution] = catalogue_.Resolve(slot_type, DecodeUtf8(utf8_text));
  return Json({{"value", value}, {"resolution", resolution}}).dump();
}

std::string LineErrorJson(size_t line, const std::string& error) { return Json({{"line", line}, {"error", error}}).dump(); }

std::string ErrorJson(const std::string& utf8_text, const std::string& error) {
  return Json({{"text", utf8_text}, {"error", error}}).dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace slu
