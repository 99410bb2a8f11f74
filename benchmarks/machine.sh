# Sourced by the benchmark scripts: machine_facts prints, as `key: value` lines, what every
# results table must name (CPU, its vector ISA, cores, date, load, palr commit). Needs $ROOT.
machine_facts() {
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*: //')"
    echo "isa: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512_bf16|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "cores: $(nproc)"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "palr: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}
