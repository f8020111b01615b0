#include "moelab/data/text.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "moelab/io/file.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace fs = std::filesystem;

const std::vector<std::string>& universal_tags() {
  static const std::vector<std::string> tags{"NOUN", "PROPN", "VERB", "ADJ", "ADV",  "ADP", "DET",
                                             "PRON", "CONJ",  "NUM",  "PRT", "PUNCT", "X"};
  return tags;
}

uint8_t universal_tag(const std::string& brown_tag) {
  enum : uint8_t { NOUN, PROPN, VERB, ADJ, ADV, ADP, DET, PRON, CONJ, NUM, PRT, PUNCT, X };
  std::string tag = brown_tag;
  if (tag.rfind("fw-", 0) == 0) tag = tag.substr(3);
  tag = tag.substr(0, tag.find('+'));  // contractions: the first word's class
  for (const char* suffix : {"-tl", "-hl", "-nc"}) {
    const size_t at = tag.find(suffix);
    if (at != std::string::npos && at > 0) tag = tag.substr(0, at);
  }
  if (tag.empty()) return X;
  static const std::map<std::string, uint8_t> exact{
      {"in", ADP},   {"cc", CONJ},  {"cs", CONJ},  {"cd", NUM},   {"od", NUM},   {"rp", PRT},
      {"to", PRT},   {"md", VERB},  {"at", DET},   {"ap", DET},   {"abn", DET},  {"abx", DET},
      {"abl", DET},  {"wdt", DET},  {"ex", PRON},  {"ql", ADV},   {"qlp", ADV},  {"wrb", ADV},
      {"rn", ADV},   {"*", ADV},    {"uh", X},     {"nil", X},    {"--", PUNCT}, {"(", PUNCT},
      {")", PUNCT},  {",", PUNCT},  {".", PUNCT},  {":", PUNCT},  {"'", PUNCT},  {"''", PUNCT},
      {"``", PUNCT}};
  if (auto it = exact.find(tag); it != exact.end()) return it->second;
  auto starts = [&](const char* prefix) { return tag.rfind(prefix, 0) == 0; };
  if (starts("np")) return PROPN;
  if (starts("nn") || starts("nr")) return NOUN;
  if (starts("vb") || starts("be") || starts("do") || starts("hv")) return VERB;
  if (starts("jj")) return ADJ;
  if (starts("rb")) return ADV;
  if (starts("dt")) return DET;
  if (starts("pp") || starts("wp")) return PRON;
  return X;
}

namespace {

const std::map<char, std::string>& brown_genres() {
  static const std::map<char, std::string> genres{
      {'a', "press: reportage"},  {'b', "press: editorial"},  {'c', "press: reviews"},
      {'d', "religion"},          {'e', "skill and hobbies"}, {'f', "popular lore"},
      {'g', "belles-lettres"},    {'h', "miscellaneous"},     {'j', "learned"},
      {'k', "fiction: general"},  {'l', "fiction: mystery"},  {'m', "fiction: science"},
      {'n', "fiction: adventure"}, {'p', "fiction: romance"}, {'r', "humor"}};
  return genres;
}

bool is_brown_file(const std::string& name) {
  return name.size() == 4 && name[0] == 'c' && brown_genres().count(name[1]) &&
         std::isdigit(static_cast<unsigned char>(name[2])) &&
         std::isdigit(static_cast<unsigned char>(name[3]));
}

std::vector<std::string> whitespace_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

}  // namespace

void check_utf8(const std::string& bytes, const std::string& path) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    size_t extra = 0;
    uint32_t code = 0, min = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, code = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, code = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, code = c & 0x07, min = 0x10000;
    } else {
      throw DataError(path + ": invalid UTF-8 at byte " + std::to_string(i));
    }
    for (size_t k = 1; k <= extra; ++k) {
      if (i + k >= n || (s[i + k] & 0xC0) != 0x80) {
        throw DataError(path + ": invalid UTF-8 at byte " + std::to_string(i));
      }
      code = (code << 6) | (s[i + k] & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      throw DataError(path + ": invalid UTF-8 at byte " + std::to_string(i));
    }
    i += extra + 1;
  }
}

std::vector<Document> read_brown(const std::string& root) {
  if (!fs::is_directory(root)) {
    throw DataError(root + ": no such directory (HINT: scripts/install-deps installs the Brown "
                    "corpus; data.path sets another place)");
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && is_brown_file(name)) names.push_back(name);
  }
  if (names.empty()) throw DataError(root + ": no Brown corpus files (ca01 ... cr09) in it");
  std::sort(names.begin(), names.end());
  std::vector<Document> documents;
  for (const auto& name : names) {
    const std::string path = root + "/" + name;
    const std::string bytes = io::read_file(path);
    check_utf8(bytes, path);
    Document document;
    document.name = name;
    document.genre = brown_genres().at(name[1]);
    std::istringstream lines(bytes);
    std::string line, token;
    int64_t line_number = 0;
    while (std::getline(lines, line)) {
      ++line_number;
      std::istringstream tokens(line);
      while (tokens >> token) {
        const size_t slash = token.rfind('/');
        if (slash == std::string::npos || slash == 0 || slash + 1 == token.size()) {
          throw DataError(path + ":" + std::to_string(line_number) + ": token '" + token +
                          "' is not WORD/TAG");
        }
        document.words.push_back(token.substr(0, slash));
        document.tags.push_back(universal_tag(token.substr(slash + 1)));
      }
    }
    documents.push_back(std::move(document));
  }
  return documents;
}

std::vector<Document> read_text(const std::string& path) {
  std::vector<Document> documents;
  if (fs::is_directory(path)) {
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(path)) {
      if (entry.is_regular_file() && entry.path().extension() == ".txt") {
        files.push_back(entry.path().string());
      }
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      const std::string bytes = io::read_file(file);
      check_utf8(bytes, file);
      Document document;
      document.name = fs::path(file).filename().string();
      document.words = whitespace_words(bytes);
      if (!document.words.empty()) documents.push_back(std::move(document));
    }
    if (documents.empty()) throw DataError(path + ": no .txt files with text in it");
    return documents;
  }
  if (!fs::exists(path)) throw DataError(path + ": no such file or directory");
  const std::string bytes = io::read_file(path);
  check_utf8(bytes, path);
  std::istringstream lines(bytes);
  std::string line, text;
  auto flush = [&] {
    Document document;
    document.words = whitespace_words(text);
    text.clear();
    if (document.words.empty()) return;
    document.name = fs::path(path).filename().string() + "#" + std::to_string(documents.size() + 1);
    documents.push_back(std::move(document));
  };
  while (std::getline(lines, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      flush();
    } else {
      text += line + "\n";
    }
  }
  flush();
  if (documents.empty()) throw DataError(path + ": no text in it");
  return documents;
}

int64_t count_words(const std::vector<Document>& documents) {
  int64_t words = 0;
  for (const auto& d : documents) words += static_cast<int64_t>(d.words.size());
  return words;
}

DocumentSplits split_by_word_count(const std::vector<Document>& documents, int64_t train_words,
                                   int64_t val_words) {
  const int64_t total = count_words(documents);
  if (train_words < 1 || val_words < 0 || train_words + val_words >= total) {
    throw DataError("the corpus has " + std::to_string(total) + " words; a split of " +
                    std::to_string(train_words) + " train and " + std::to_string(val_words) +
                    " validation words leaves no test words");
  }
  DocumentSplits splits;
  const int64_t bounds[2] = {train_words, train_words + val_words};
  std::vector<Document>* parts[3] = {&splits.train, &splits.val, &splits.test};
  int64_t position = 0;
  for (const auto& document : documents) {
    const int64_t n = static_cast<int64_t>(document.words.size());
    int64_t start = 0;
    while (start < n) {
      const int part = position + start < bounds[0] ? 0 : position + start < bounds[1] ? 1 : 2;
      const int64_t end = part < 2 ? std::min(n, bounds[part] - position) : n;
      Document piece;
      piece.name = document.name;
      piece.genre = document.genre;
      piece.words.assign(document.words.begin() + start, document.words.begin() + end);
      if (!document.tags.empty()) {
        piece.tags.assign(document.tags.begin() + start, document.tags.begin() + end);
      }
      parts[part]->push_back(std::move(piece));
      start = end;
    }
    position += n;
  }
  return splits;
}

DocumentSplits split_documents(const std::vector<Document>& documents, double val_fraction,
                               double test_fraction, uint64_t seed) {
  if (val_fraction < 0 || test_fraction < 0 || val_fraction + test_fraction >= 1) {
    throw ConfigError("data.val_fraction and data.test_fraction must be >= 0 with a sum below 1");
  }
  const int64_t n = static_cast<int64_t>(documents.size());
  auto count = [&](double fraction) {
    return fraction > 0 ? std::max<int64_t>(1, static_cast<int64_t>(fraction * static_cast<double>(n) + 0.5)) : 0;
  };
  const int64_t n_val = count(val_fraction), n_test = count(test_fraction);
  if (n_val + n_test >= n) {
    throw DataError("a split of " + std::to_string(n) + " documents into " + std::to_string(n_val) +
                    " validation and " + std::to_string(n_test) + " test documents leaves none "
                    "to train on");
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 generator(seed);
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with the generator's raw draws
    std::swap(order[static_cast<size_t>(i)],
              order[static_cast<size_t>(generator() % static_cast<uint64_t>(i + 1))]);
  }
  DocumentSplits splits;
  for (int64_t i = 0; i < n; ++i) {
    const Document& d = documents[static_cast<size_t>(order[static_cast<size_t>(i)])];
    (i < n - n_val - n_test ? splits.train : i < n - n_test ? splits.val : splits.test).push_back(d);
  }
  return splits;
}

}  // namespace moelab::data
