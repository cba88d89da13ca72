"""The container image recipe stays in step with the package (no Docker engine here to build it)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_dockerfile_pins_the_projects_torch_and_copies_existing_paths():
    text = DOCKERFILE.read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch"))
    assert f"pip install --no-cache-dir {torch_pin} " in text
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, _ = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_dockerfile_model_step_and_the_manifests_image_agree():
    text = DOCKERFILE.read_text()
    step = re.search(r'RUN python -c "(.+)"', text).group(1)
    # the build step that unpacks the bundled models, run here against the real registry
    out = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    images = set()
    for manifest in (ROOT / "deploy" / "k3s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                images.add(c["image"])
                assert c["command"][0] == "edgeinfer"
    assert images == {"edgeinfer:latest"}
    assert "-t edgeinfer:latest" in text
