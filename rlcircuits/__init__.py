"""rlcircuits: what RL post-training does to a transformer's behaviour and circuits."""
