"""The broker's own storage on PostgreSQL: the stores (one per aggregate), their SQL,
the migrations, and the embedded cluster of dev mode and the tests."""
