"""rlcircuits: what RL post-training does to a transformer's behaviour and circuits."""

import logging

# bitsandbytes (imported by peft) warns at import that an optional CPU kernel package is missing; its own
# fallback kernel is what runs, so the warning says nothing about a run and would open every log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
