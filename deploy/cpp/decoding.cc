// decoding.py's slot decoding in C++: constrained Viterbi, the spans' forward-backward confidences
// and the intent softmax, the same arithmetic in the same order (tests compare the two). Used by
// slu.cc's Model (C++ demo, Android) and, through decoding_capi.cc, by the Python prediction path.
// Loops run over the tags the intent allows only: a tag outside them scores -inf (Viterbi) and
// weighs 0 (forward-backward), so leaving it out changes no maximum and no sum.
#include <algorithm>
#include <cmath>
#include <limits>

#include "slu.h"

namespace slu {

namespace {

std::vector<size_t> Indices(const std::vector<char>& mask) {
  std::vector<size_t> on;
  for (size_t t = 0; t < mask.size(); ++t)
    if (mask[t]) on.push_back(t);
  return on;
}

}  // namespace

void PrepareTables(Decoding* d) {
  const size_t T = d->start_ok.size();
  const double inf = std::numeric_limits<double>::infinity();
  d->step.assign(T * T, -inf);
  d->moves.assign(T * T, 0.0);
  for (size_t k = 0; k < T * T; ++k)
    if (d->transition_ok[k]) d->step[k] = d->transitions.empty() ? 0.0 : d->transitions[k], d->moves[k] = std::exp(d->step[k]);
}

std::vector<double> Softmax(const float* logits, size_t n, double temperature) {
  std::vector<double> z(n);
  for (size_t k = 0; k < n; ++k) z[k] = static_cast<double>(logits[k]) / temperature;
  const double top = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (double& v : z) sum += (v = std::exp(v - top));
  for (double& v : z) v /= sum;
  return z;
}

std::vector<int> DecodeTags(const Decoding& d, const float* token_logits, size_t n, size_t intent) {
  // decoding.viterbi: float64 sums in the same order as numpy, first maximum on ties.
  const size_t T = d.start_ok.size();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<size_t> on = Indices(d.intent_tags[intent]);
  if (n == 0) return {};
  std::vector<double> best(T, -inf), next(T, -inf);
  std::vector<int> back(n * T, 0);
  for (size_t t : on) best[t] = d.start_ok[t] ? static_cast<double>(token_logits[t]) : -inf;
  for (size_t i = 1; i < n; ++i) {
    for (size_t t : on) {
      size_t arg = on[0];
      double top = -inf;
      for (size_t p : on) {
        const double candidate = best[p] + d.step[p * T + t];
        if (p == on[0] || candidate > top) top = candidate, arg = p;
      }
      back[i * T + t] = static_cast<int>(arg);
      next[t] = top + static_cast<double>(token_logits[i * T + t]);
    }
    best.swap(next);
  }
  std::vector<int> path{static_cast<int>(std::max_element(best.begin(), best.end()) - best.begin())};
  for (size_t i = n - 1; i > 0; --i) path.push_back(back[i * T + path.back()]);
  std::reverse(path.begin(), path.end());
  return path;
}

std::vector<double> SpanConfidences(const Decoding& d, const float* token_logits, const std::vector<int>& tag_ids,
                                    const std::vector<std::pair<int, int>>& spans, size_t intent, double temperature) {
  // decoding.span_confidences, the same normalised forward-backward in double
  const size_t T = d.start_ok.size(), n = tag_ids.size();
  if (spans.empty()) return {};
  const std::vector<size_t> on = Indices(d.intent_tags[intent]);
  const std::vector<double>& moves = d.moves;
  std::vector<double> psi(n * T, 0.0), alpha(n * T, 0.0), beta(n * T, 1.0), scale(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    double top = -std::numeric_limits<double>::infinity();
    for (size_t t : on) top = std::max(top, static_cast<double>(token_logits[i * T + t]) / temperature);
    for (size_t t : on) psi[i * T + t] = std::exp(static_cast<double>(token_logits[i * T + t]) / temperature - top);
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t t : on) {
      double into = 0;
      if (i == 0) {
        into = d.start_ok[t] ? 1.0 : 0.0;
      } else {
        for (size_t p : on) into += alpha[(i - 1) * T + p] * moves[p * T + t];
      }
      alpha[i * T + t] = into * psi[i * T + t];
      scale[i] += alpha[i * T + t];
    }
    for (size_t t : on) alpha[i * T + t] /= scale[i];
  }
  for (size_t i = n - 1; i-- > 0;)
    for (size_t p : on) {
      double out = 0;
      for (size_t t : on) out += moves[p * T + t] * psi[(i + 1) * T + t] * beta[(i + 1) * T + t];
      beta[i * T + p] = out / scale[i + 1];
    }
  std::vector<double> confidences;
  for (const auto& [s, e] : spans) {
    double p = alpha[s * T + tag_ids[s]];
    for (int i = s + 1; i < e; ++i) p *= moves[tag_ids[i - 1] * T + tag_ids[i]] * psi[i * T + tag_ids[i]] / scale[i];
    if (static_cast<size_t>(e) < n) {
      const int inside = d.inside_tag[tag_ids[s]];
      double after = 0;
      for (size_t t : on)
        if (static_cast<int>(t) != inside) after += moves[tag_ids[e - 1] * T + t] * psi[e * T + t] * beta[e * T + t];
      p *= after / scale[e];
    }
    confidences.push_back(p);
  }
  return confidences;
}

}  // namespace slu
