# mailer: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
APT    := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0

.PHONY: demo test lint typecheck pytest system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[fast]'
	touch $@

$(TSTAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[fast,test]'
	touch $@

## demo: install, validate the shipped example and dry-run it into outbox/ (no server needed)
demo: $(STAMP)
	MAILER_SENDER='Digdir <invitasjon@example.org>' $(BIN)/mailer validate recipients/eksempel.csv --template invitasjon
	MAILER_SENDER='Digdir <invitasjon@example.org>' \
	MAILER_UNSUBSCRIBE_URL='https://example.org/avmeld?e={{ email | urlencode }}' \
		$(BIN)/mailer send recipients/eksempel.csv --template invitasjon --dry-run --outbox outbox
	@echo "Open the preview page: outbox/index.html"

## system-deps: Debian packages of the real programs tests use (headless Chromium,
## SpamAssassin, Postfix as a private smtpd, Dovecot as a private IMAP server, faketime to
## run the CLI at another moment); best effort
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v spamassassin >/dev/null 2>&1 || missing="$$missing spamassassin"; \
	test -x /usr/sbin/postfix || missing="$$missing postfix"; \
	test -x /usr/sbin/dovecot || missing="$$missing dovecot-imapd"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing"; \
			echo 'postfix postfix/main_mailer_type select No configuration' \
				| debconf-set-selections 2>/dev/null || true; \
			($(APT) update >/dev/null && $(APT) install --no-install-recommends $$missing >/dev/null) \
				|| echo "could not install$$missing: the tests that need them are skipped"; \
		else echo "missing$$missing (not root): the tests that need them are skipped"; fi; \
	fi

## test: install test extras, then ruff, mypy and the whole pytest suite
test: $(TSTAMP) system-deps
	$(BIN)/ruff check mailer tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

## bench: the performance benchmark against Postfix's smtp-sink (installs it when absent)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) outbox .mailer .pytest_cache .mypy_cache .ruff_cache
