# shellcheck shell=bash
# The controller's virtual environment for Ansible, shared by scripts/install (Ansible
# only) and scripts/install-test-deps (plus Molecule and the linters). Sourced; expects
# $repo_root. One place for the version ranges.
#
#   ensure_ansible_venv            # .venv-ansible with Ansible
#   ensure_ansible_venv --test     # ... and Molecule, molecule-plugins[podman], linters
#
# Environment: ANSIBLE_PYTHON  interpreter for the venv (default: the newest Python 3.12+
# found, else 3.11 with an older Ansible).

ANSIBLE_VENV="$repo_root/.venv-ansible"
# The `ansible` package brings ansible-core and the collections the playbooks and
# Molecule use (containers.podman, ansible.posix, community.general): Galaxy is not
# needed. ansible 14 = ansible-core 2.21, which needs Python 3.12+ on the controller.
ANSIBLE_PIP_SPECS=("ansible>=14,<15")
# Python 3.11 controllers (Debian 12 without a newer Python) get ansible-core 2.19.
ANSIBLE_PIP_SPECS_PY311=("ansible>=12,<13")
ANSIBLE_TEST_PIP_SPECS=(
    "molecule>=26,<27"
    "molecule-plugins[podman]>=26,<27"
    "ansible-lint>=26,<27"
    "yamllint>=1.35,<2"
)

python_version_ok() {  # PYTHON MINOR: true if PYTHON is CPython 3.MINOR or newer
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (3, $2) else 1)" 2>/dev/null
}

find_controller_python() {
    local candidate
    if [[ -n "${ANSIBLE_PYTHON:-}" ]]; then
        printf '%s\n' "$ANSIBLE_PYTHON"
        return 0
    fi
    for candidate in python3.12 python3.13 \
        /root/.pyenv/versions/3.12*/bin/python /root/.pyenv/versions/3.13*/bin/python python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_version_ok "$candidate" 12; then
            command -v "$candidate"
            return 0
        fi
    done
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_version_ok "$candidate" 11; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_ansible_venv() {
    local with_test=0 python specs stamp want
    [[ "${1:-}" == --test ]] && with_test=1
    python="$(find_controller_python)" || {
        printf 'ERROR: Ansible needs Python 3.11 or newer on this machine (3.12+ preferred)\n' >&2
        return 1
    }
    if python_version_ok "$python" 12; then
        specs=("${ANSIBLE_PIP_SPECS[@]}")
    else
        printf 'WARNING: %s is older than 3.12: using ansible-core 2.19\n' "$python" >&2
        specs=("${ANSIBLE_PIP_SPECS_PY311[@]}")
    fi
    (( with_test )) && specs+=("${ANSIBLE_TEST_PIP_SPECS[@]}")

    if [[ ! -x "$ANSIBLE_VENV/bin/python" ]] || ! "$ANSIBLE_VENV/bin/python" -c 'import sys' 2>/dev/null \
        || ! python_version_ok "$ANSIBLE_VENV/bin/python" "$("$python" -c 'import sys; print(sys.version_info[1])')"; then
        printf '[ansible-venv] creating %s with %s\n' "${ANSIBLE_VENV#"$repo_root"/}" "$("$python" --version 2>&1)"
        "$python" -m venv --clear "$ANSIBLE_VENV"
        "$ANSIBLE_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    fi
    stamp="$ANSIBLE_VENV/.postwall-specs"
    want="$("$ANSIBLE_VENV/bin/python" -V 2>&1) ${specs[*]}"
    # A test venv also serves the plain install; the reverse needs the test tools added.
    if [[ -f "$stamp" ]] && { [[ "$(cat "$stamp")" == "$want" ]] \
        || { (( ! with_test )) && [[ "$(cat "$stamp")" == "$want ${ANSIBLE_TEST_PIP_SPECS[*]}" ]]; }; }; then
        printf '[ansible-venv] up to date\n'
        return 0
    fi
    printf '[ansible-venv] pip install %s\n' "${specs[*]}"
    "$ANSIBLE_VENV/bin/python" -m pip install -q --disable-pip-version-check "${specs[@]}"
    printf '%s\n' "$want" >"$stamp"
}
