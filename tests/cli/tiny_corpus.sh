# Sourced by the tiny LM CLI scripts: a temporary $dir (removed on exit) holding corpus.txt, 60
# documents cycling through one sentence (next words are predictable), and $common, the
# overrides that point a config's text data set at it.
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
i=0
while [ $i -lt 60 ]; do
  printf 'the quick brown fox jumps over the lazy dog and the cat sleeps on the warm mat\n\n' >> "$dir/corpus.txt"
  i=$((i + 1))
done
common="data.path=$dir/corpus.txt data.cache_dir=$dir/cache"
