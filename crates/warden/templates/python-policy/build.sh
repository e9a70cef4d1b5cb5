#!/bin/sh
# Build {{snake}}.wasm (needs componentize-py: `pip install -r requirements.txt`).
set -e
cd "$(dirname "$0")"
componentize-py -d wit -w warden:sdk/{{world}}@0.1.0 componentize app -o {{snake}}.wasm
