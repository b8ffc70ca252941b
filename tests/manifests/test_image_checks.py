"""The image checks accept the shipped Dockerfile and catch what would break the image's promise."""

import shutil
import unittest
from pathlib import Path

from image_checks import dockerfile_problems, instructions, static_binary_problems

DOCKERFILE = Path(__file__).resolve().parent.parent.parent / "Dockerfile"


class DockerfileProblemsTest(unittest.TestCase):
    def shipped(self):
        return DOCKERFILE.read_text()

    def test_shipped_dockerfile_has_no_problem(self):
        self.assertEqual(dockerfile_problems(self.shipped()), [])

    def test_continuations_are_joined(self):
        self.assertEqual(instructions("RUN a \\\n b\n# c\nCOPY x y\n"), [("RUN", "a   b"), ("COPY", "x y")])

    def test_other_build_command_is_caught(self):
        text = self.shipped().replace("scripts/build-image-binaries /out", "cargo build --release")
        self.assertTrue(any("build-image-binaries" in p for p in dockerfile_problems(text)))

    def test_shell_tools_in_runtime_are_caught(self):
        text = self.shipped().replace("ENTRYPOINT", "RUN apt-get install -y iproute2\nENTRYPOINT")
        self.assertTrue(any("runs commands" in p for p in dockerfile_problems(text)))

    def test_debian_runtime_is_caught(self):
        text = self.shipped().replace("gcr.io/distroless/static-debian12 AS runtime", "debian:12 AS runtime")
        self.assertTrue(any("distroless" in p for p in dockerfile_problems(text)))


class StaticBinaryTest(unittest.TestCase):
    def test_a_dynamic_binary_is_caught(self):
        python = shutil.which("python3")
        self.assertTrue(any("interpreter" in p or "shared" in p for p in static_binary_problems(Path(python).resolve())))

    def test_a_text_file_is_caught(self):
        self.assertTrue(static_binary_problems(DOCKERFILE))
