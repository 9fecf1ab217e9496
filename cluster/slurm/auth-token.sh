# Sourced by gptray.sbatch (from the repository root): Ray token authentication for the job's cluster.
# The token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, made here if none
# exists. Anyone who can read the token can join the cluster and run code as you, so it is made
# readable by you alone (umask 077), and an existing one that others can read is reported.
export RAY_AUTH_MODE=token
token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  if [ ! -f "$token_file" ]; then
    if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then  # `ray get-auth-token --generate` writes ~/.ray/auth_token only
      echo "gptray: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH does not exist" >&2
      exit 1
    fi
    (umask 077 && mkdir -p "$HOME/.ray" && ray get-auth-token --generate >/dev/null)
  fi
  if [ -n "$(find "$token_file" -perm /077 2>/dev/null)" ]; then
    echo "gptray: warning: $token_file can be read by other users, who could then join this Ray cluster" \
         "and run code as you: chmod 600 $token_file" >&2
  fi
fi
