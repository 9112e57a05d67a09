"""The store: one memory-mapped LMDB environment shared by every server process.

- ``database``  the environment, its sub-databases (``SUB_DATABASES``) and every typed
                operation on them; the only module that names a sub-database;
- ``layout``    the byte layout of a stored profile (read in place by decisions);
- ``records``   the stored records other than profiles (applied events, scheduled
                actions, the trigger log);
- ``backup``    consistent backups and restores while servers keep writing.
"""
