# workerd config for the webtask cold-start benchmark peer.
# The listen address below is a placeholder: the harness overrides it with
#   workerd serve config.capnp --socket-addr http=127.0.0.1:$PORT
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .helloWorker) ],
  sockets = [ ( name = "http", address = "127.0.0.1:8080", http = (), service = "main" ) ],
);

const helloWorker :Workerd.Worker = (
  modules = [ (name = "hello.js", esModule = embed "hello.js") ],
  compatibilityDate = "2024-01-01",
);
