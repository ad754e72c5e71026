"""The peers of `bench/loader.py --peers` (bench/peers/base.py: the interface)."""
