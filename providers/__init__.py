"""Everything that talks to an outside system, and the local simulators of those systems.

Never imports temporalio.
"""
