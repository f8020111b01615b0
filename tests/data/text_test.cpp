#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "moelab/data/text.h"
#include "moelab/data/text_data.h"
#include "moelab/data/token_file.h"
#include "moelab/data/tokenizer.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using moelab::DataError;
using moelab::testing::error_message;

namespace {

class TextTest : public moelab::testing::TempDirTest {
 protected:
  void write(const std::string& name, const std::string& text) {
    std::filesystem::create_directories(std::filesystem::path(path(name)).parent_path());
    std::ofstream(path(name), std::ios::binary) << text;
  }
  // A two-document Brown corpus in form C.
  void write_brown() {
    write("brown/ca01", "\n\n\tThe/at jury/nn said/vbd ./.\n\n\tIt/pps was/bedz Fulton/np-tl ./.\n");
    write("brown/cr09", "\tThe/at jury/nn laughed/vbd ,/, didn't/dod* it/pps ?/.\n");
    write("brown/CONTENTS", "not a corpus file/xx");
  }
  std::vector<std::string> words(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string w; in >> w;) out.push_back(w);
    return out;
  }
};

}  // namespace

TEST_F(TextTest, BrownKeepsWordsTagsAndGenres) {
  write_brown();
  const auto documents = moelab::data::read_brown(path("brown"));
  ASSERT_EQ(documents.size(), 2u);
  EXPECT_EQ(documents[0].name, "ca01");
  EXPECT_EQ(documents[0].genre, "press: reportage");
  EXPECT_EQ(documents[1].genre, "humor");
  EXPECT_EQ(documents[0].words, words("The jury said . It was Fulton ."));
  const auto& tags = moelab::data::universal_tags();
  std::vector<std::string> names;
  for (uint8_t t : documents[1].tags) names.push_back(tags[t]);
  EXPECT_EQ(names, words("DET NOUN VERB PUNCT VERB PRON PUNCT"));
  write("brown/cb01", "\tgood/jj bad\n");
  EXPECT_EQ(error_message<DataError>([&] { moelab::data::read_brown(path("brown")); }),
            path("brown/cb01") + ":1: token 'bad' is not WORD/TAG");
  EXPECT_NE(error_message<DataError>([&] { moelab::data::read_brown(path("none")); }).find("install-deps"),
            std::string::npos);
}

TEST_F(TextTest, BrownTagsMapToUniversalClasses) {
  const auto& tags = moelab::data::universal_tags();
  auto tag = [&](const char* brown) { return tags[moelab::data::universal_tag(brown)]; };
  EXPECT_EQ(tag("nn-tl"), "NOUN");
  EXPECT_EQ(tag("nns$"), "NOUN");
  EXPECT_EQ(tag("np$"), "PROPN");
  EXPECT_EQ(tag("ppss+ber"), "PRON");
  EXPECT_EQ(tag("fw-at"), "DET");
  EXPECT_EQ(tag("bedz"), "VERB");
  EXPECT_EQ(tag("md*"), "X");  // an unknown form falls to X rather than a wrong class
  EXPECT_EQ(tag("jjt"), "ADJ");
  EXPECT_EQ(tag("in-hl"), "ADP");
  EXPECT_EQ(tag("``"), "PUNCT");
  EXPECT_EQ(tag("cd"), "NUM");
  EXPECT_EQ(tag("to"), "PRT");
}

TEST_F(TextTest, Utf8ErrorsNameTheByte) {
  moelab::data::check_utf8("plain \xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "ok.txt");
  auto offset = [](const std::string& bytes) {
    return error_message<DataError>([&] { moelab::data::check_utf8(bytes, "f.txt"); });
  };
  EXPECT_EQ(offset("ab\xC3("), "f.txt: invalid UTF-8 at byte 2");
  EXPECT_EQ(offset("abc\xC0\x80"), "f.txt: invalid UTF-8 at byte 3");      // overlong
  EXPECT_EQ(offset("\xED\xA0\x80"), "f.txt: invalid UTF-8 at byte 0");     // a surrogate
  EXPECT_EQ(offset("abcd\xE2\x82"), "f.txt: invalid UTF-8 at byte 4");     // cut at the end
  EXPECT_EQ(offset("\xFF"), "f.txt: invalid UTF-8 at byte 0");
  write("bad.txt", "fine words\n\nthen \xFE here");
  EXPECT_EQ(error_message<DataError>([&] { moelab::data::read_text(path("bad.txt")); }),
            path("bad.txt") + ": invalid UTF-8 at byte 17");
}

TEST_F(TextTest, PlainTextDocumentsAreFilesOrBlankLineBlocks) {
  write("one.txt", "first document\nstill first\n\n  \nsecond  one\n\n\n");
  const auto blocks = moelab::data::read_text(path("one.txt"));
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0].words, words("first document still first"));
  EXPECT_EQ(blocks[1].words, words("second one"));
  EXPECT_TRUE(blocks[0].tags.empty());
  write("dir/b.txt", "bee\n\nstill bee");
  write("dir/a.txt", "ay");
  write("dir/skip.md", "not text");
  const auto files = moelab::data::read_text(path("dir"));
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].name, "a.txt");
  EXPECT_EQ(files[1].words, words("bee still bee"));
}

// Bengio et al.'s protocol cuts the running text by word counts, documents where they fall.
TEST_F(TextTest, WordCountSplitCutsDocumentsAtTheBoundaries) {
  std::vector<moelab::data::Document> documents(3);
  for (int d = 0; d < 3; ++d) {
    for (int w = 0; w < 5; ++w) documents[d].words.push_back(std::to_string(10 * d + w));
    documents[d].tags.assign(5, static_cast<uint8_t>(d));
  }
  const auto splits = moelab::data::split_by_word_count(documents, 6, 4);
  EXPECT_EQ(moelab::data::count_words(splits.train), 6);
  EXPECT_EQ(moelab::data::count_words(splits.val), 4);
  EXPECT_EQ(moelab::data::count_words(splits.test), 5);
  ASSERT_EQ(splits.train.size(), 2u);
  EXPECT_EQ(splits.train[1].words, std::vector<std::string>{"10"});
  EXPECT_EQ(splits.val[0].words, words("11 12 13 14"));
  EXPECT_EQ(splits.val[0].tags, std::vector<uint8_t>(4, 1));
  EXPECT_EQ(splits.test[0].words, words("20 21 22 23 24"));
  EXPECT_THROW(moelab::data::split_by_word_count(documents, 10, 5), DataError);  // no test words
  const auto shuffled = moelab::data::split_documents(documents, 0.34, 0.0, 7);
  EXPECT_EQ(shuffled.train.size(), 2u);
  EXPECT_EQ(shuffled.val.size(), 1u);
  const auto again = moelab::data::split_documents(documents, 0.34, 0.0, 7);
  EXPECT_EQ(again.val[0].words, shuffled.val[0].words);
}

// The installed corpus (scripts/install-deps) under Bengio et al.'s protocol.
TEST_F(TextTest, BrownCorpusBengioSplitSizes) {
  const auto documents = moelab::data::read_brown(moelab::data::default_brown_path());
  ASSERT_EQ(documents.size(), 500u);
  std::set<std::string> genres;
  for (const auto& d : documents) genres.insert(d.genre);
  EXPECT_EQ(genres.size(), 15u);
  const int64_t total = moelab::data::count_words(documents);
  EXPECT_GT(total, 1150000);
  EXPECT_LT(total, 1200000);
  const auto splits = moelab::data::split_by_word_count(documents, 800000, 200000);
  EXPECT_EQ(moelab::data::count_words(splits.train), 800000);
  EXPECT_EQ(moelab::data::count_words(splits.val), 200000);
  EXPECT_EQ(moelab::data::count_words(splits.test), total - 1000000);
}

TEST_F(TextTest, WordTokenizerCountsAndRoundTrips) {
  const auto a = words("the cat saw the dog . the end"), b = words("a dog saw the cat");
  moelab::data::WordTokenizerOptions options;
  options.min_count = 2;
  const auto tokenizer = moelab::data::train_word_tokenizer({&a, &b}, options);
  // <unk>, </s>, then by count: the (4), cat dog saw (2 each, byte order).
  EXPECT_EQ(tokenizer->vocab_size(), 6);
  EXPECT_EQ(tokenizer->token(2), "the");
  EXPECT_EQ(tokenizer->token(3), "cat");
  EXPECT_EQ(tokenizer->token(5), "saw");
  std::vector<int32_t> word_of;
  const auto ids = tokenizer->encode(words("the dog ran"), &word_of);
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 4, 0, 1}));
  EXPECT_EQ(word_of, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(tokenizer->decode(ids), "the dog <unk>\n");
  tokenizer->save(path("tok"));
  const auto loaded = moelab::data::load_tokenizer(path("tok"));
  EXPECT_EQ(loaded->kind(), "word");
  EXPECT_EQ(loaded->encode(words("saw the cat")), tokenizer->encode(words("saw the cat")));
  write("tok/vocab.txt", "<unk>\t1\n");
  EXPECT_NE(error_message<DataError>([&] { moelab::data::load_tokenizer(path("tok")); }).find("vocab.txt"),
            std::string::npos);
}

TEST_F(TextTest, SentencePieceRoundTripsAnyTextWithByteFallback) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "SentencePiece's shim needs RTLD_DEEPBIND, which AddressSanitizer refuses";
#endif
  std::vector<std::vector<std::string>> documents;
  for (int i = 0; i < 200; ++i) {
    documents.push_back(words("the quick brown fox jumps over the lazy dog number " + std::to_string(i) +
                              " while another fox sleeps under a tree near the river bank"));
  }
  std::vector<const std::vector<std::string>*> pointers;
  for (const auto& d : documents) pointers.push_back(&d);
  moelab::data::SentencePieceOptions options;
  options.vocab_size = 320;
  options.model_type = "bpe";
  const auto tokenizer = moelab::data::train_sentencepiece_tokenizer(pointers, options);
  EXPECT_EQ(tokenizer->kind(), "sentencepiece");
  EXPECT_EQ(tokenizer->token(tokenizer->end_of_document()), "</s>");
  const auto text = words("the lazy fox crossed the Ωmega river");  // Ω never seen: bytes
  std::vector<int32_t> word_of;
  const auto ids = tokenizer->encode(text, &word_of);
  EXPECT_EQ(ids.back(), tokenizer->end_of_document());
  EXPECT_EQ(word_of.front(), 0);
  EXPECT_EQ(word_of.back(), 7);
  EXPECT_EQ(tokenizer->decode(ids), "the lazy fox crossed the Ωmega river\n");
  tokenizer->save(path("spm"));
  const auto loaded = moelab::data::load_tokenizer(path("spm"));
  EXPECT_EQ(loaded->encode(text), ids);
  options.vocab_size = 100;
  EXPECT_THROW(moelab::data::train_sentencepiece_tokenizer(pointers, options), moelab::ConfigError);
}

TEST_F(TextTest, TokenFileBlocksShiftTargetsAndCarryWordsAndTags) {
  // Tokens 10..16; words start at 0, 1, 3, 4, 6 (so tokens 2 and 5 continue a word).
  std::vector<int32_t> ids{10, 11, 12, 13, 14, 15, 16};
  std::vector<uint8_t> side;
  for (int i = 0; i < 7; ++i) {
    const bool starts = i != 2 && i != 5;
    side.push_back(static_cast<uint8_t>((starts ? moelab::data::kStartsWord : 0) | (i == 6 ? moelab::data::kNoSideTag : i)));
  }
  moelab::data::write_token_file(path("t.tok"), ids, side, 70000);  // 4-byte ids
  auto file = std::make_shared<const moelab::data::TokenFile>(path("t.tok"));
  EXPECT_EQ(file->size(), 7);
  moelab::data::TokenBlocks blocks(file, 3);
  EXPECT_EQ(blocks.size(), 2);  // (7 - 1) / 3
  const auto batch = blocks.rows(torch::tensor({1, 0}, torch::kLong));
  EXPECT_TRUE(torch::equal(batch.at("token_ids"), torch::tensor({{13, 14, 15}, {10, 11, 12}}, torch::kLong)));
  EXPECT_TRUE(torch::equal(batch.at("targets"), torch::tensor({{14, 15, 16}, {11, 12, 13}}, torch::kLong)));
  EXPECT_TRUE(torch::equal(batch.at("target_word_starts"),
                           torch::tensor({{1, 0, 1}, {1, 0, 1}}, torch::kBool)));
  EXPECT_TRUE(torch::equal(batch.at("token_tags"), torch::tensor({{3, 4, 5}, {0, 1, 2}}, torch::kLong)));
  // Damage is named: a cut file, an id outside the vocabulary.
  moelab::data::write_token_file(path("small.tok"), ids, side, 100);  // 2-byte ids
  std::filesystem::resize_file(path("small.tok"), 40);
  EXPECT_NE(error_message<DataError>([&] { moelab::data::TokenFile f(path("small.tok")); }).find("truncated"),
            std::string::npos);
  moelab::data::write_token_file(path("oov.tok"), ids, side, 15);
  EXPECT_EQ(error_message<DataError>([&] { moelab::data::TokenFile f(path("oov.tok")); }),
            path("oov.tok") + ": token 5 has id 15, outside the vocabulary of 15");
}

// A text data set is encoded once into the cache; a second load maps the same token files.
TEST_F(TextTest, TextDataIsEncodedOnceAndCutIntoBlocks) {
  std::string text;
  for (int d = 0; d < 10; ++d) text += "document " + std::to_string(d) + " has some words in it\n\n";
  write("corpus.txt", text);
  const auto options = moelab::data::TextDataOptions()
                           .path(path("corpus.txt"))
                           .val_fraction(0.2)
                           .test_fraction(0.2)
                           .block_length(4)
                           .cache_dir(path("cache"));
  const auto splits = moelab::data::load_text_data("text", options);
  ASSERT_TRUE(splits.tokenizer && splits.train && splits.val && splits.test);
  // 6 training documents of 7 words + </s>: 48 tokens, 11 blocks of 4 targets.
  EXPECT_EQ(splits.train->size(), 11);
  EXPECT_EQ(splits.val->size(), 3);  // 16 tokens
  const auto entries = std::distance(std::filesystem::directory_iterator(path("cache")), {});
  EXPECT_EQ(entries, 1);
  std::filesystem::remove(path("corpus.txt"));  // cached: the text is not read again...
  write("corpus.txt", text);                    // ...but a changed file is a new key
  std::filesystem::last_write_time(path("corpus.txt"), std::filesystem::file_time_type::clock::now() +
                                                           std::chrono::hours(1));
  const auto again = moelab::data::load_text_data("text", moelab::data::TextDataOptions(options).block_length(8));
  EXPECT_EQ(again.train->size(), 5);  // (48 - 1) / 8
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(path("cache")), {}), 2);
  EXPECT_THROW(moelab::data::load_text_data("text", moelab::data::TextDataOptions(options).path(path("missing.txt"))), DataError);
}
