// Text corpora for language models: the Brown corpus (Francis & Kucera 1964/1979, form C: 500
// documents of about 2,000 words in 15 genres, every word tagged with its part of speech) and a
// user's own UTF-8 text. A document is its words (the corpus's tokens; whitespace-separated for
// plain text), a part-of-speech class per word where the corpus has tags, and its genre, kept as
// side channels for routing analysis.
//
// Splits: the protocol of Bengio et al. 2003 (the first 800,000 words train, the next 200,000
// validation, the rest test, cutting documents where the counts fall), or a seeded
// document-level split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moelab::data {

/// Word classes of the universal part-of-speech tag set (Petrov et al. 2012, with PROPN apart
/// from NOUN), which Brown's 80-odd tags (and their -tl/-hl/-nc/fw- forms) map to.
const std::vector<std::string>& universal_tags();
/// A Brown tag ("nn-tl", "ppss+ber", "fw-at") -> its index in universal_tags().
uint8_t universal_tag(const std::string& brown_tag);
inline constexpr uint8_t kNoTag = 255;

struct Document {
  std::string name;   // "ca01", a file name, "FILE#3" for the third document of a file
  std::string genre;  // Brown: "press: reportage", ...; plain text: ""
  std::vector<std::string> words;
  std::vector<uint8_t> tags;  // per word, into universal_tags(); empty without tags
};

/// The Brown corpus in form C (files c[a-r]NN in `root`, in name order). DataError naming the
/// file and line of a token that is not WORD/TAG, or the directory if it has no such files.
std::vector<Document> read_brown(const std::string& root);

/// A .txt file (documents separated by blank lines) or a directory of them (each file one
/// document, in name order). Every byte is checked as UTF-8: a bad byte names the file and
/// its offset.
std::vector<Document> read_text(const std::string& path);

/// DataError "PATH: invalid UTF-8 at byte OFFSET" at the first bad sequence.
void check_utf8(const std::string& bytes, const std::string& path);

struct DocumentSplits {
  std::vector<Document> train, val, test;
};

/// Bengio et al.'s protocol: words [0, train_words) train, the next val_words validation, the
/// rest test, documents cut where a boundary falls. DataError if the corpus has too few words.
DocumentSplits split_by_word_count(const std::vector<Document>& documents, int64_t train_words,
                                   int64_t val_words);

/// A seeded shuffle of whole documents: the last val_fraction and test_fraction of it (rounded,
/// at least one each when the fraction is > 0) are validation and test.
DocumentSplits split_documents(const std::vector<Document>& documents, double val_fraction,
                               double test_fraction, uint64_t seed);

/// Words in all documents.
int64_t count_words(const std::vector<Document>& documents);

}  // namespace moelab::data
