#!/bin/sh
# Usage: tiny_study.sh MOELAB STUDY_FILE DIR
# Runs a tiny study end to end, then checks that every image the report references exists and
# that `moelab report` rebuilds the page.
set -u
moelab=$1 study=$2 dir=$3
rm -rf "$dir"
"$moelab" study -c "$study" --run-dir "$dir" > "$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
index="$dir/report/index.html"
images=$(grep -o 'src="[^"]*"' "$index" | sed 's/src="//; s/"$//')
count=0
for image in $images; do
  [ -s "$dir/report/$image" ] || { echo "missing image: $image"; exit 1; }
  count=$((count + 1))
done
echo "images: $count"
rm "$index"
"$moelab" report "$dir" > /dev/null && [ -s "$index" ] && echo "report rebuilt"
grep -c "<tr><td>" "$index" | sed 's/^/table rows: /'
