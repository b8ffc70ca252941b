"""What can be verified of the container image without a Docker engine.

The Dockerfile's shape (a build stage that runs scripts/build-image-binaries, a
distroless/static runtime stage that only copies our two binaries and labels
them), and the binaries that script produced: static ELF files (no program
interpreter, no shared libraries), so they run on an image without a libc.
"""

import re
import subprocess

IMAGE_BINARIES = ("chaos-agent", "chaosctl")
REQUIRED_LABELS = (
    "org.opencontainers.image.title", "org.opencontainers.image.version",
    "org.opencontainers.image.source", "org.opencontainers.image.licenses",
)


def instructions(dockerfile_text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile_text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(dockerfile_text):
    """Stage name -> (base image, [(INSTRUCTION, arguments)])."""
    result, current = {}, None
    for word, rest in instructions(dockerfile_text):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(result)}"
            current = name
            result[current] = (parts[0], [])
        elif current is not None:
            result[current][1].append((word, rest))
    return result


def dockerfile_problems(dockerfile_text):
    """Everything wrong with the Dockerfile's shape, as a list of sentences."""
    problems = []
    found = stages(dockerfile_text)
    if set(found) != {"build", "runtime"}:
        return [f"stages are {sorted(found)}, not build and runtime"]
    _, build = found["build"]
    if not any(word == "RUN" and "scripts/build-image-binaries /out" in rest for word, rest in build):
        problems.append("the build stage does not run scripts/build-image-binaries /out (the command scripts/test uses)")
    base, runtime = found["runtime"]
    if not base.startswith("gcr.io/distroless/static"):
        problems.append(f"the runtime base {base} is not distroless/static")
    if any(word == "RUN" for word, _ in runtime):
        problems.append("the runtime stage runs commands: it must only copy the binaries")
    copies = [rest for word, rest in runtime if word == "COPY"]
    expected_copy = "--from=build " + " ".join(f"/out/{b}" for b in IMAGE_BINARIES) + " /usr/local/bin/"
    if copies != [expected_copy]:
        problems.append(f"the runtime stage copies {copies}, not only `{expected_copy}`")
    labels = " ".join(rest for word, rest in runtime if word == "LABEL")
    for label in REQUIRED_LABELS:
        if f"{label}=" not in labels:
            problems.append(f"label {label} missing")
    if not any(word == "ENTRYPOINT" for word, _ in runtime):
        problems.append("no ENTRYPOINT")
    return problems


def static_binary_problems(path):
    """Why the ELF file at `path` would not run on an image without a libc (empty if it would)."""
    headers = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True)
    if headers.returncode != 0:
        return [f"{path}: not an ELF file ({headers.stderr.strip()})"]
    problems = []
    if "INTERP" in headers.stdout:
        problems.append(f"{path}: has a program interpreter (dynamically linked)")
    dynamic = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True)
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", dynamic.stdout)
    if needed:
        problems.append(f"{path}: needs shared libraries {needed}")
    return problems
