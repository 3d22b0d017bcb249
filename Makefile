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

.PHONY: run test bench deps v8 build clean

run: deps
	$(CARGO) build --release --bin webtask
	@echo
	@echo "webtask node on http://$(LISTEN) -- try:"
	@echo "  curl -s -X POST --data-binary 'return function (context, cb) { cb(null, \"Hello, \" + context.data.name); }' 'http://$(LISTEN)/api/run/demo?name=webtask'"
	@echo
	./target/release/webtask serve --listen $(LISTEN)

test: deps
	$(CARGO) test

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

deps: v8

v8:
	@if [ ! -f "$(V8_CACHE)" ] && [ -f "$(V8_SHARED)" ]; then \
		echo "installing V8 archive from ../shared/v8 into cargo's cache"; \
		mkdir -p "$(dir $(V8_CACHE))" && cp "$(V8_SHARED)" "$(V8_CACHE).tmp" && mv "$(V8_CACHE).tmp" "$(V8_CACHE)"; \
	fi

clean:
	$(CARGO) clean
