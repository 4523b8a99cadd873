#!/usr/bin/env bash
# Print the path of a CPython 3.12 (the Lambda runtime's version), or nothing.
# Tries python3.12 on PATH, then a pyenv-installed 3.12 (pyenv's shim alone may refuse to run it).
set -u
works() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
candidate=$(command -v python3.12 2>/dev/null)
if works "$candidate"; then
  candidate=$("$candidate" -c 'import sys; print(sys.executable)')
elif command -v pyenv >/dev/null 2>&1; then
  version=$(pyenv versions --bare 2>/dev/null | grep '^3\.12' | tail -n 1)
  candidate=$([ -n "$version" ] && PYENV_VERSION=$version pyenv which python3.12 2>/dev/null)
fi
works "$candidate" && echo "$candidate"
exit 0
