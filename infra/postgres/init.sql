-- Runs once, when the PostgreSQL volume is first created (docker-entrypoint-initdb.d).
-- POSTGRES_DB (attrflow) holds the registry; Prefect and Feast get their own databases.
CREATE DATABASE prefect OWNER attrflow;
CREATE DATABASE feast OWNER attrflow;
