// The deterministic "model" of tests/support/openai_test_server.py, written again in C++ so a
// test can compute the leaderboard the built-in openai runner must produce without asking the
// server. Keep the two in step: the server's docstring states the rule.
#pragma once

#include <cstdint>
#include <limits>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace evald::testing::openai_rule {

inline uint32_t fnv1a32(const std::string& text) {
  uint32_t h = 0x811C9DC5u;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x01000193u;
  }
  return h;
}

// Tokens are the matches of \s*\S+, with their character offsets (ASCII test data: bytes).
inline std::vector<std::pair<std::string, size_t>> tokenize(const std::string& text) {
  std::vector<std::pair<std::string, size_t>> out;
  size_t i = 0;
  while (i < text.size()) {
    const size_t start = i;
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    out.emplace_back(text.substr(start, i - start), start);
  }
  return out;
}

inline double token_logprob(const std::string& model, const std::string& token) {
  return -(1.0 + static_cast<double>(fnv1a32(model + "|" + token) % 1000) / 100.0);
}

// The value the model answers for a prompt whose last expression is "A+B" or "A*B".
inline int64_t generated_value(const std::string& model, const std::string& prompt, int skill) {
  static const std::regex kExpression(R"((\d+)\s*([+*])\s*(\d+))");
  std::smatch last;
  for (auto it = std::sregex_iterator(prompt.begin(), prompt.end(), kExpression);
       it != std::sregex_iterator(); ++it) {
    last = *it;
  }
  const int64_t a = std::stoll(last[1].str());
  const int64_t b = std::stoll(last[3].str());
  int64_t value = last[2].str() == "+" ? a + b : a * b;
  if (fnv1a32(model + "|" + prompt) % 100 >= static_cast<uint32_t>(skill)) value += 1;
  return value;
}

// The log-likelihood of " " + choice after `context`, as the runner sums it.
inline double continuation_logprob(const std::string& model, const std::string& context,
                                   const std::string& choice) {
  const std::string prompt = context + " " + choice;
  double sum = 0;
  for (const auto& [token, offset] : tokenize(prompt)) {
    if (offset >= context.size() && offset > 0) sum += token_logprob(model, token);
  }
  return sum;
}

inline size_t predicted_choice(const std::string& model, const std::string& context,
                               const std::vector<std::string>& choices) {
  size_t best = 0;
  double best_value = -std::numeric_limits<double>::infinity();
  for (size_t c = 0; c < choices.size(); ++c) {
    const double value = continuation_logprob(model, context, choices[c]);
    if (value > best_value) {
      best_value = value;
      best = c;
    }
  }
  return best;
}

}  // namespace evald::testing::openai_rule
