"""The configuration compiler: the catalog file (TOML) into immutable, kernel-ready
tables.

- ``catalog``   offers, channels, placements, the model, and everything below, loaded
                and checked as one versioned ``Catalog``;
- ``rules``     eligibility and segment expressions compiled to kernel programs;
- ``events``    event types: typed fields and the profile actions they apply;
- ``segments``  segment rules and their evaluation over a profile;
- ``policies``  contact policies (caps, suppressions, cooldowns) as kernel arrays;
- ``pace``      per-channel delivery timing (send windows, quiet hours, time zones);
- ``triggers``  event patterns and delayed actions;
- ``timing``    durations and times of day, as the catalog writes them.
"""
