#!/usr/bin/env bash
# Installs audiocraft 1.3.0 beside the project's pinned CPU torch 2.13.0.
#
#   bash scripts/install_audiocraft.sh .venv/bin/python
#
# audiocraft pins torch 2.1 (and xformers, torchaudio, av to match), so it
# goes in with --no-deps, followed by the light dependencies its model code
# imports, every version pinned. PyPI's torchaudio native libraries do not
# load beside CPU torch 2.13: they are deleted (audiocraft's MusicGen path
# only needs torchaudio's Python side). Idempotent: exits at once when
# `import audiocraft.models` already works.
set -euo pipefail
PY="${1:?usage: install_audiocraft.sh PATH/TO/python}"

importable() {
  "$PY" -W ignore -c "import audiocraft.models" >/dev/null 2>&1
}

if importable; then
  echo "audiocraft already importable; nothing to do"
  exit 0
fi

# audiocraft itself, its own pins ignored.
PACKAGES=(
  audiocraft==1.3.0
  # imported by audiocraft.models / modules / data / quantization
  einops==0.8.2 flashy==0.0.2 omegaconf==2.4.0 julius==0.2.8
  num2words==0.5.14 docopt==0.6.2 av==18.1.0 torchmetrics==1.9.0
  lightning-utilities==0.15.3 xformers==0.0.35 torchaudio==2.11.0
  # flashy -> dora-search
  dora_search==0.1.13 colorlog==6.12.0 retrying==1.4.2 submitit==1.5.4
  treetable==0.2.6
  # spacy (imported at module level by the conditioners)
  spacy==3.8.18 spacy-legacy==3.0.12 spacy-loggers==1.0.5 thinc==8.3.14
  blis==1.3.4 confection==1.3.4 cymem==2.0.16 murmurhash==1.0.16
  preshed==3.0.15 srsly==2.5.6 wasabi==1.1.3 catalogue==2.0.10
  weasel==1.0.1 cloudpathlib==0.26.0 smart_open==9.0.2 wrapt==2.5.2
  requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1
  charset-normalizer==3.5.3 httpx==0.28.1 httpcore==1.0.9
  platformdirs==4.14.8
  # librosa (imported by the chroma module)
  librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 lazy-loader==0.6
  numba==0.68.1 llvmlite==0.50.0 pooch==1.9.0 soxr==1.1.0
)
"$PY" -m pip install -q --disable-pip-version-check --no-deps \
  "${PACKAGES[@]}" 2>&1 | grep -v "^WARNING: Location" || true

# Keep torchaudio's Python package, drop the native libraries built for
# another torch (their import fails and takes torchaudio down with it).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
find "$SITE/torchaudio" -name "*.so" -delete

if ! importable; then
  echo "audiocraft still does not import; the error:" >&2
  "$PY" -W ignore -c "import audiocraft.models" >&2 || true
  exit 1
fi
echo "audiocraft $("$PY" -c 'import audiocraft; print(audiocraft.__version__)' 2>/dev/null) installed"
