#!/usr/bin/env bash
# Fill .whl/ with exactly the wheels the lent GPU machine lacks for bench/gpu.sh, for its Python 3.12.
#
#   scripts/gpu-wheels.sh          (from the repo root, with internet: pip's registry)
#
# That machine reaches no registry, so whatever its image lacks travels in the git-ignored .whl/
# folder (the device tool's `carry`). Which packages: the check's own imports, measured, not listed
# by hand. The venv imports every module bench/gpu.sh runs (the engine and model tests, bench/train.py,
# bench/engine.py); each distribution they load that is not in IMAGE (the image's packages, as
# /work/.library/device/KINDS.md listed them on 2026-11-17) is fetched at the version this venv
# tested, without its dependencies (those are either in the image or found the same way).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.whl}

IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

# NAME==VERSION of each distribution the check imports that the image lacks
missing=$(IMAGE="$IMAGE" "$PYTHON" - <<'PY'
import importlib.metadata as md, os, re, runpy, sys
sys.path.insert(0, os.getcwd())
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
import tests.conftest, tests.test_engine, tests.test_model  # noqa: E401,F401  (the tests gpu.sh runs)
for script in ("bench/train.py", "bench/engine.py"):
    runpy.run_path(script, run_name="imported")             # their imports, not their main()
image = set(os.environ["IMAGE"].split())
dists = md.packages_distributions()
used = {norm(d) for mod in list(sys.modules) for d in dists.get(mod.split(".")[0], [])}
for name in sorted(used - image - {"nanocode"}):
    print(f"{name}=={md.version(name)}")
PY
)
[ -n "$missing" ] || { echo "the image has everything bench/gpu.sh imports: no wheels needed"; exit 0; }
echo "the image lacks: $missing"
rm -rf "$DEST"; mkdir -p "$DEST"
# pip matches each manylinux tag exactly, so name the common ones
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$DEST" \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 $missing
ls -l "$DEST"
echo "carry .whl with bench/gpu.sh: see bench/RESULTS.md, 'GPU check'"
