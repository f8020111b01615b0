#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <stdlib.h>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/data/text_data.h"
#include "moelab/models/generation.h"
#include "moelab/perf/eager_decoder.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/trainer.h"
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

struct BenchLanguageModelArguments : ConfigArguments {
  int64_t steps = 10, warmup = 2, generate = 200;
  bool json = false, eager_reference = false;
};

// Training tokens/s over `steps` timed steps (after `warmup`), in a temporary run directory
// without evaluation or checkpoints; then generation tokens/s at batch 1 with the key/value
// cache, from a freshly initialised model of the same config.
void bench_language_model(const BenchLanguageModelArguments& args) {
  const std::string model = run::resolve_run_config(args.files, args.overrides)["model"]["name"].as<std::string>();
  if (model != "moe_decoder") {
    throw ConfigError("model.name: bench lm measures a language model (moe_decoder), not " + model);
  }
  YAML::Node resolved;
  const train::TrainProfile profile = profile_training(args, args.warmup, args.steps, resolved);
  const double tokens_per_step = resolved["train"]["batch_size"].as<double>() *
                                 resolved["data"]["block_length"].as<double>();
  const double train_seconds = profile.step.total() + profile.bookkeeping;
  const double train_rate = static_cast<double>(profile.steps) * tokens_per_step / std::max(train_seconds, 1e-9);

  train::RunParts parts = run::assemble_run(resolved);
  auto& decoder = dynamic_cast<models::MoEDecoderImpl&>(*parts.model);
  models::GenerationOptions options;
  options.max_new_tokens = args.generate;
  options.seed = 1;
  models::generate(decoder, {parts.data.tokenizer->end_of_document()}, options);  // warm-up
  const auto start = std::chrono::steady_clock::now();
  const auto generated = models::generate(decoder, {parts.data.tokenizer->end_of_document()}, options);
  const double generate_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double generate_rate = static_cast<double>(generated.size()) / std::max(generate_seconds, 1e-9);
  double eager_rate = 0, eager_bf16_rate = 0;
  const std::string precision = resolved["train"]["precision"].as<std::string>();
  const bool bf16 = precision == "bf16";
  if (args.eager_reference) {
    const auto& o = decoder.options;
    perf::EagerDecoderOptions eager;
    eager.vocab_size = o.vocab_size();
    eager.d_model = o.moe().d_model();
    eager.d_ff = decoder.ffn_width();
    eager.num_layers = o.num_layers();
    eager.num_heads = o.num_heads();
    eager.num_experts = decoder.is_moe_layer(0) ? o.moe().num_experts() : 0;
    eager.top_k = o.moe().router().top_k();
    eager.dropout = o.dropout();
    eager.attention_dropout = o.attention_dropout();
    eager.batch_size = resolved["train"]["batch_size"].as<int64_t>();
    eager.block_length = resolved["data"]["block_length"].as<int64_t>();
    eager_rate = perf::eager_decoder_train_tokens_per_s(eager, args.steps, args.warmup);
    if (bf16) {
      eager.bf16_autocast = true;
      eager_bf16_rate = perf::eager_decoder_train_tokens_per_s(eager, args.steps, args.warmup);
    }
  }
  if (args.json) {
    std::cout << nlohmann::json{{"train_tokens_per_s", train_rate},
                                {"eager_reference_tokens_per_s", eager_rate},
                                {"eager_reference_bf16_tokens_per_s", eager_bf16_rate},
                                {"precision", precision},
                                {"train_steps", profile.steps},
                                {"tokens_per_step", tokens_per_step},
                                {"generate_tokens_per_s", generate_rate},
                                {"generated_tokens", generated.size()}}
                     .dump()
              << "\n";
    return;
  }
  std::cout << fmt::format("training: {:.0f} tokens/s ({} steps of {:.0f} tokens, after {} warm-up steps)\n"
                           "generation: {:.0f} tokens/s (batch 1, key/value cache, {} tokens)\n",
                           train_rate, profile.steps, tokens_per_step, args.warmup, generate_rate,
                           generated.size());
  if (args.eager_reference) {
    std::cout << fmt::format("eager LibTorch reference (Mixtral-style expert loop, full logits), fp32: "
                             "{:.0f} tokens/s; moelab ({}) / eager = {:.2f}\n",
                             eager_rate, precision, train_rate / std::max(eager_rate, 1e-9));
    if (bf16) {
      std::cout << fmt::format("eager LibTorch reference under bf16 autocast: {:.0f} tokens/s; "
                               "moelab (bf16) / eager (bf16) = {:.2f}\n",
                               eager_bf16_rate, train_rate / std::max(eager_bf16_rate, 1e-9));
    }
  }
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
      ->check(kNonNegative)
      ->capture_default_str();
  generate
      ->add_option("--temperature", generate_args->options.temperature,
                   "Logit temperature; 0 = greedy")
      ->check(kNonNegative)
      ->capture_default_str();
  generate
      ->add_option("--top-k", generate_args->options.top_k,
                   "Sample among the k most likely; 0 = all")
      ->check(kNonNegative)
      ->capture_default_str();
  generate
      ->add_option("--top-p", generate_args->options.top_p,
                   "Sample among the most likely tokens of total probability p")
      ->check(number_check([](double p) { return p > 0 && p <= 1; }, "in (0, 1]", "(0, 1]"))
      ->capture_default_str();
  generate->add_option("--seed", generate_args->options.seed, "Seed of the draws")->capture_default_str();
  generate->add_flag("--latest", generate_args->latest, "Use the run's newest checkpoint, not its best");
  generate->add_flag("--past-end", generate_args->keep_going,
                     "Go on past the end-of-document token");
  generate->callback([generate_args, &action] {
    action = [generate_args] { generate_command(*generate_args); };
  });

  auto bench_args = std::make_shared<BenchLanguageModelArguments>();
  CLI::App* bench_lm = app.get_subcommand("bench")->add_subcommand(
      "lm", "Training tokens/s of a language-model config, and generation tokens/s (batch 1, "
            "key/value cache)");
  add_config_arguments(*bench_lm, *bench_args);
  bench_lm->add_option("--steps", bench_args->steps, "Timed training steps")
      ->check(kPositive)
      ->capture_default_str();
  bench_lm->add_option("--warmup", bench_args->warmup, "Untimed steps first")
      ->check(kNonNegative)
      ->capture_default_str();
  bench_lm->add_option("--generate", bench_args->generate, "Tokens to generate")
      ->check(kPositive)
      ->capture_default_str();
  bench_lm->add_flag("--json", bench_args->json, "One JSON object");
  bench_lm->add_flag("--eager-reference", bench_args->eager_reference,
                     "Also time the same sizes written in plain eager LibTorch (every block MoE "
                     "or every block dense, as block 0)");
  bench_lm->callback([bench_args, &action] {
    action = [bench_args] {
      try {
        bench_language_model(*bench_args);
      } catch (const ConfigError& e) {
        throw config::with_origin(e, bench_args->files, bench_args->overrides);
      }
    };
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
