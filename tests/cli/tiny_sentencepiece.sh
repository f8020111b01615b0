#!/bin/sh
# tiny_sentencepiece.sh MOELAB: a SentencePiece tokenizer trained by the tool on the text
# tiny_lm.sh uses, then a run on it that generates. Prints one line per check that passed.
set -e
moelab=$1
here=$(dirname "$0")
. "$here/tiny_corpus.sh"
"$moelab" tokenizer train -c "$here/tiny_lm.yaml" $common --vocab-size 300 --out "$dir/spm" > /dev/null
test -s "$dir/spm/tokenizer.model" && echo "sentencepiece tokenizer trained"
"$moelab" train -c "$here/tiny_lm.yaml" --run-dir "$dir/run-spm" $common data.tokenizer=sentencepiece \
  data.tokenizer_path="$dir/spm" train.max_steps=10 > /dev/null
"$moelab" generate "$dir/run-spm" --prompt "the" --max-new-tokens 5 --seed 1 > /dev/null && echo "sentencepiece run generates"
