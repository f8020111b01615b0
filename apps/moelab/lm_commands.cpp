#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/data/text_data.h"
#include "moelab/models/generation.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/util/errors.h"

namespace moelab::app {

namespace {

struct GenerateArguments {
  std::string path, prompt;
  models::GenerationOptions options;
  bool latest = false, keep_going = false;
};

void generate_command(const GenerateArguments& args) {
  const run::LoadedLanguageModel loaded = run::load_language_model(args.path, args.latest);
  auto* decoder = dynamic_cast<models::MoEDecoderImpl*>(loaded.model.get());
  const data::Tokenizer& tokenizer = *loaded.tokenizer;
  std::vector<int32_t> prompt = tokenizer.encode(tokenizer.split_words(args.prompt));
  prompt.pop_back();  // the prompt's document goes on: no end-of-document token
  if (prompt.empty()) prompt.push_back(tokenizer.end_of_document());  // start a new document
  models::GenerationOptions options = args.options;
  if (!args.keep_going) options.stop_token = tokenizer.end_of_document();
  std::vector<int32_t> generated;
  std::string printed;
  std::cout << args.prompt << std::flush;
  models::generate(*decoder, prompt, options, [&](int32_t id) {
    generated.push_back(id);
    const std::string text = tokenizer.decode(generated);
    // Print what decoding the tokens so far adds (a subword may change the text before it).
    const std::string added = text.compare(0, printed.size(), printed) == 0 ? text.substr(printed.size()) : text;
    std::cout << (printed.empty() && !args.prompt.empty() && !added.empty() && added[0] != ' ' ? " " : "")
              << added << std::flush;
    printed = text;
  });
  std::cout << "\n";
}

struct TokenizerTrainArguments : ConfigArguments {
  data::SentencePieceOptions options;
  std::string out;
};

void tokenizer_train_command(const TokenizerTrainArguments& args) {
  const YAML::Node resolved = run::resolve_run_config(args.files, args.overrides);
  const std::string name = resolved["data"]["name"].as<std::string>();
  if (name != "brown" && name != "text") {
    throw ConfigError("data.name: a tokenizer trains on text (brown or text), not " + name);
  }
  YAML::Node section = config::clone(resolved["data"]);
  section.remove("name");
  const auto data_options = config::parse_options<data::TextDataOptions>(section, "data");
  const data::DocumentSplits splits = data::read_text_splits(name, data_options);
  std::vector<const std::vector<std::string>*> words;
  for (const auto& document : splits.train) words.push_back(&document.words);
  const auto start = std::chrono::steady_clock::now();
  const auto tokenizer = data::train_sentencepiece_tokenizer(words, args.options);
  tokenizer->save(args.out);
  std::cout << fmt::format("sentencepiece {} tokenizer of {} pieces, trained on {} training "
                           "documents in {:.1f} s: {}\n(use it with data.tokenizer: sentencepiece, "
                           "data.tokenizer_path: {})\n",
                           args.options.model_type, tokenizer->vocab_size(), splits.train.size(),
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                           args.out, args.out);
}

}  // namespace

void register_language_model_commands(CLI::App& app, Action& action) {
  auto generate_args = std::make_shared<GenerateArguments>();
  CLI::App* generate = app.add_subcommand(
      "generate", "Continue a prompt with a trained language model (printed as it is produced)");
  generate->add_option("path", generate_args->path, "A run directory (its best checkpoint) or a checkpoint")
      ->required();
  generate->add_option("--prompt", generate_args->prompt, "Text to continue")->required();
  generate->add_option("--max-new-tokens", generate_args->options.max_new_tokens, "Tokens to add")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  generate->add_option("--temperature", generate_args->options.temperature,
                       "Logit temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  generate->add_option("--top-k", generate_args->options.top_k, "Sample among the k most likely; 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  generate->add_option("--top-p", generate_args->options.top_p,
                       "Sample among the most likely tokens of total probability p")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  generate->add_option("--seed", generate_args->options.seed, "Seed of the draws")->capture_default_str();
  generate->add_flag("--latest", generate_args->latest, "Use the run's newest checkpoint, not its best");
  generate->add_flag("--past-end", generate_args->keep_going,
                     "Go on past the end-of-document token");
  generate->callback([generate_args, &action] {
    action = [generate_args] { generate_command(*generate_args); };
  });

  CLI::App* tokenizer = app.add_subcommand("tokenizer", "Tokenizers for language models");
  tokenizer->require_subcommand(1);
  auto train_args = std::make_shared<TokenizerTrainArguments>();
  CLI::App* train = tokenizer->add_subcommand(
      "train", "Train a SentencePiece tokenizer (BPE or unigram, byte fallback) on the training "
               "split of a config's text data");
  add_config_arguments(*train, *train_args);
  train->add_option("--vocab-size", train_args->options.vocab_size, "Pieces in the vocabulary")
      ->check(CLI::Range(260, 1 << 20))
      ->capture_default_str();
  train->add_option("--model-type", train_args->options.model_type, "bpe or unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  train->add_option("--character-coverage", train_args->options.character_coverage,
                    "Share of characters covered without byte fallback")
      ->check(CLI::Range(0.5, 1.0))
      ->capture_default_str();
  train->add_option("--out", train_args->out, "Directory to write the tokenizer to")->required();
  train->callback([train_args, &action] {
    action = [train_args] {
      try {
        tokenizer_train_command(*train_args);
      } catch (const ConfigError& e) {
        throw config::with_origin(e, train_args->files, train_args->overrides);
      }
    };
  });
}

}  // namespace moelab::app
