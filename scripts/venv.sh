# Sourced by the other scripts: make .venv with jobgraph (editable) and its test tools, once per pyproject change.
VENV="${VENV:-.venv}"
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== installing jobgraph and its test tools into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import jobgraph, pytest' 
  rm -f "$VENV"/.installed-*; touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
