#!/usr/bin/env bash
# make check's entry to tests/test_web.py: the web page in headless Chromium against a real
# `bit serve`. Skipped (exit 77, with a SKIP line) only when Chromium or ChromeDriver is not
# installed; Chromium without python3-selenium is a failure (deploy/install-deps.sh --browser).
set -u
src=${srcdir:-$(dirname "$0")/..}
chrome=$(command -v chromium || command -v chromium-browser || true)
driver=$(command -v chromedriver || true)
if [ -z "$chrome" ] || [ -z "$driver" ]; then
  echo "SKIP: test_web needs Chromium and ChromeDriver (Debian: chromium chromium-driver python3-selenium; deploy/install-deps.sh --browser)"
  echo "tally: 0 passed, 0 failed"
  exit 77
fi
py=
for p in /usr/bin/python3 python3; do
  if "$p" -c 'import selenium' 2>/dev/null; then py=$p; break; fi
done
if [ -z "$py" ]; then
  echo "FAIL: Chromium is installed but Selenium is not (Debian: python3-selenium)"
  echo "tally: 0 passed, 1 failed"
  exit 1
fi
exec "$py" "$src/tests/test_web.py" --chromium "$chrome" --chromedriver "$driver"
