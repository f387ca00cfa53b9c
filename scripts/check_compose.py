"""Checks docker-compose.yml without a Docker engine (CI has none).

It must parse as YAML; every service must either be built from this repository (`build`
naming a directory that exists) or use an image pinned to a version tag or digest (not
`latest`, not untagged); every `depends_on` must name a service of the file.

    python scripts/check_compose.py docker-compose.yml
"""

import os
import re
import sys

import yaml


def image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    # A colon inside a registry host:port is not a tag.
    if not name or "/" in tag:
        return False
    return tag != "latest" and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag) is not None


def check(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    problems = []
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        return [f"{path}: no services"]
    base = os.path.dirname(os.path.abspath(path))
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"service {name}: not a mapping")
            continue
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            if not os.path.isdir(os.path.join(base, context)):
                problems.append(f"service {name}: build context {context!r} is not a directory")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(base, context, dockerfile)):
                problems.append(f"service {name}: {dockerfile} not found in {context!r}")
        elif not isinstance(svc.get("image"), str) or not image_pinned(svc["image"]):
            problems.append(f"service {name}: neither built here nor a pinned image ({svc.get('image')!r})")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append(f"service {name}: depends on unknown service {dep!r}")
    return problems


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
    problems = check(path)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
