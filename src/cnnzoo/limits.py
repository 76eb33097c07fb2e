"""Limits the commands and the library check before any work (kept free of heavy imports, so the
command line can use them while it parses)."""

# The largest side a net's input may have (--img-size, --model-arg img_size, a U-Net's tiles): a
# batch of larger images does not fit in this machine's memory (100,000 px asked torch for
# terabytes and ended in a MemoryError traceback).
MAX_INPUT_SIZE = 4096

# The largest seed: torch's generators take a signed 64-bit one (--seed 9223372036854775808
# ended in a traceback, 'Overflow when unpacking long long', once the images had loaded).
MAX_SEED = 2**63 - 1
