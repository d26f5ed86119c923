-- Run once by the mariadb image after it created MARIADB_USER: the tests create and drop a
-- database each, so `reconcile` gets the same rights as scripts/mariadb.sh gives it.
GRANT ALL PRIVILEGES ON *.* TO 'reconcile'@'%';
