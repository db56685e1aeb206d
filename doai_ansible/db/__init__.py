"""The database part's building blocks: the connection (and the password kept out of every
message, command line and child environment), the migration files and history, SQL statement
splitting, snapshots and restores with the PostgreSQL client tools."""
