#!/bin/sh
# Runs once, when the postgres container starts on an empty data volume (the image's
# /docker-entrypoint-initdb.d, as the postgres user, on a server listening on its Unix
# socket only). Makes the role the gateways connect as, `gateway`: no superuser, owner
# of the database `gateway`, with the password of the catalog-password secret (which the
# image has read into POSTGRES_PASSWORD). The superuser (`postgres`) is then left without
# a password, so it can only sign in over the container's Unix socket
# (`docker compose exec postgres psql -U postgres`), never over the network.
# A production database splits the gateway's role in two: docs/DEPLOY.md.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv gateway_password POSTGRES_PASSWORD
CREATE ROLE gateway LOGIN PASSWORD :'gateway_password';
CREATE DATABASE gateway OWNER gateway;
ALTER ROLE CURRENT_USER PASSWORD NULL;
SQL
