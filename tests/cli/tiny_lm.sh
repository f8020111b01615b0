#!/bin/sh
# tiny_lm.sh MOELAB: a language model's whole path through the tool on a text the test writes:
# train (word tokenizer), eval, seeded generation (twice, the same), the Hugging Face export, a
# two-run study and its report. Prints one line per check that passed.
set -e
moelab=$1
here=$(dirname "$0")
. "$here/tiny_corpus.sh"
"$moelab" train -c "$here/tiny_lm.yaml" --run-dir "$dir/run" $common > "$dir/train.log"
grep -q 'tokens/s' "$dir/train.log" && echo "train logs tokens/s"
test -s "$dir/run/tokenizer/vocab.txt" && echo "run keeps its tokenizer"
"$moelab" eval "$dir/run" --json | tee "$dir/eval.json" | grep -q '"word_perplexity"'
awk -F'"word_perplexity":' '{ split($2, v, /[,}]/); if (v[1] + 0 < 2.0) print "eval word_perplexity below 2"; else print "eval word_perplexity " v[1] }' "$dir/eval.json"
a=$("$moelab" generate "$dir/run" --prompt "the quick" --max-new-tokens 12 --seed 5)
b=$("$moelab" generate "$dir/run" --prompt "the quick" --max-new-tokens 12 --seed 5)
[ "$a" = "$b" ] && echo "generation is seeded"
greedy=$("$moelab" generate "$dir/run" --prompt "the quick brown" --max-new-tokens 3 --temperature 0)
[ "$greedy" = "the quick brown fox jumps over" ] && echo "greedy continues the sentence" || echo "greedy: $greedy"
"$moelab" export "$dir/run" --format hf --out "$dir/hf" > /dev/null
grep -q '"architectures": \[\s*$' "$dir/hf/config.json" && grep -q '"MixtralForCausalLM"' "$dir/hf/config.json" &&
  test -s "$dir/hf/model.safetensors" && test -s "$dir/hf/tokenizer/vocab.txt" && echo "hf export is Mixtral"
"$moelab" bench lm -c "$here/tiny_lm.yaml" $common train.precision=bf16 --steps 2 --warmup 1 --generate 8 \
  --eager-reference --json |
  grep -Eq '"eager_reference_bf16_tokens_per_s":[1-9][0-9.e+]*,"eager_reference_tokens_per_s":[1-9][0-9.e+]*,"generate_tokens_per_s":[0-9.e+]+.*"precision":"bf16".*"train_tokens_per_s":[0-9.e+]+' &&
  echo "bench lm measures both, in bf16"
"$moelab" info -c "$here/tiny_lm.yaml" $common --json | grep -q '"parameters_total":[1-9]' &&
  echo "info takes the vocabulary from the data"
"$moelab" study -c "$here/tiny_lm_study.yaml" --run-dir "$dir/study" base.data.path="$dir/corpus.txt" \
  base.data.cache_dir="$dir/cache" > "$dir/study.log"
grep -q 'moe .*test perplexity per word' "$dir/study.log" && grep -q '<h2>Sample generations</h2>' "$dir/study/report/index.html" &&
  test -s "$dir/study/report/loss.png" && echo "language-model study and report"
