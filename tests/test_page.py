"""The chat page at /ui in headless Chromium against the real stack: the API as production
serves it (gunicorn + gevent), a worker process (status watch, delivery), real Redis and API
server, and the demo agent streaming its reply word by word. What a user sees: a created
session turns running live, a reply grows in place as the pod writes it and settles as
delivered, the status follows sleep / wake across the server ending the stream, a reload
brings the conversation back, markup in a message stays text, delete removes the session."""

from __future__ import annotations

import shutil

import pytest
import requests
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devcluster.processes import wait_until

from .browser import binaries, console, screenshot
from .constants import API_KEY

# 40 words, streamed 0.05 s apart: ~2 s of a reply growing on screen.
WORDS = " ".join(f"word{n}" for n in range(1, 41))

# Records, inside the page, what it showed, in order: each message's reply text as it changed
# (["reply", seq, text]) and the stream state (["stream", state]). What the user saw, not what
# a poll happened to catch.
RECORD = """
const seen = window.seen = [], last = {};
const note = (key, entry) => { if (last[key] !== entry[entry.length - 1]) {
  last[key] = entry[entry.length - 1]; seen.push(entry); } };
const stream = document.getElementById('stream-state');
note('stream', ['stream', stream.textContent]);
new MutationObserver(() => {
  for (const m of document.querySelectorAll('#messages div.message[data-seq]')) {
    note(m.dataset.seq, ['reply', m.dataset.seq, m.querySelector('.reply').textContent]);
  }
}).observe(document.getElementById('messages'),
           {subtree: true, childList: true, characterData: true});
new MutationObserver(() => note('stream', ['stream', stream.textContent])).observe(
  stream, {subtree: true, childList: true, characterData: true});
"""


def seen(driver) -> list[list]:
    return driver.execute_script("return window.seen")


def replies_shown(driver, seq: str) -> list[str]:
    return [entry[2] for entry in seen(driver) if entry[:2] == ["reply", seq]]


def reconnects(driver) -> int:
    return seen(driver).count(["stream", "reconnecting"])


@pytest.fixture
def stack(settings, kube, store, api_process, worker_process, make_agent):
    agent = make_agent(stream=True, stream_delay_seconds=0.05).start()
    settings = settings.replace(pod_url_template=agent.url)

    def start(**env: str):
        api = api_process(settings, CHAT_PAGE_ENABLED="true", **env)
        worker_process(settings, "page")
        return api

    return start


def text(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def until(driver, predicate, what: str, timeout: float = 20, also=None):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        shown = {name: text(driver, f"#{name}") for name in ("status", "stream-state", "error")}
        raise AssertionError(f"the page never showed {what} in {timeout} s; it shows {shown}, "
                             f"last message {last_message(driver)}"
                             + (f"; {also()}" if also else "")) from None


def open_page(driver, url: str) -> None:
    driver.get(f"{url}/ui")
    until(driver, lambda d: d.title == "session-manager chat", "the chat page")


def sign_in_and_create(driver, mark_ready) -> str:
    """Enter the key, create a session from the page; it is selected and turns running live."""
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    driver.find_element(By.ID, "user-id").send_keys("alice@example.com")
    driver.find_element(By.ID, "create").click()
    item = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions li.selected"),
                 "the created session selected")[0]
    session_id = item.get_attribute("data-uuid")
    assert "alice@example.com" in item.text
    until(driver, lambda d: text(d, "#stream-state") == "connected", "the stream connected")
    assert text(driver, "#status") != "running"  # no pod yet
    mark_ready(session_id)  # as the kubelet would; the worker's watch sees it
    until(driver, lambda d: text(d, "#status") == "running", "the status turn running")
    return session_id


def send(driver, message: str) -> None:
    driver.find_element(By.ID, "chat-input").send_keys(message)
    driver.find_element(By.ID, "send").click()


LAST_MESSAGE = """
const items = document.querySelectorAll('#messages div.message[data-seq]');
if (!items.length) return {};
const item = items[items.length - 1], part = (name) => item.querySelector(name).textContent;
return {seq: item.dataset.seq, text: part('.text'), state: part('.state'), reply: part('.reply')};
"""


def last_message(driver) -> dict:
    """The newest message as shown: its seq, text, state and reply (one round trip)."""
    return driver.execute_script(LAST_MESSAGE)


def page_errors(driver) -> list[dict]:
    """Console errors other than HTTP statuses (a 401 before the key is entered is expected):
    script errors and Content-Security-Policy violations."""
    return [e for e in console(driver) if e["level"] == "SEVERE" and e["source"] != "network"]


def test_a_reply_streams_into_the_page_word_by_word_and_settles_delivered(
        browser, stack, tmp_path, mark_ready):
    api = stack()
    open_page(browser, api.url)
    session_id = sign_in_and_create(browser, mark_ready)
    browser.execute_script(RECORD)
    send(browser, WORDS)
    full = f"echo: {WORDS}"

    # Mid-stream: part of the reply is on screen, and the message is being delivered.
    until(browser, lambda d: 0 < len(last_message(d).get("reply", "")) < len(full) // 2,
          "part of the reply", timeout=30)
    middle = last_message(browser)
    mid_shot = screenshot(browser, tmp_path / "mid-stream.png")
    assert middle["text"] == WORDS and middle["state"] == "delivering", middle
    assert full.startswith(middle["reply"]), middle
    assert last_message(browser)["state"] == "delivering"  # so the shot shows it mid-stream

    until(browser, lambda d: last_message(d).get("state") == "delivered", "delivered")
    done = last_message(browser)
    end_shot = screenshot(browser, tmp_path / "delivered.png")
    assert done["reply"] == full and done["text"] == WORDS, done

    replies = replies_shown(browser, done["seq"])
    partial = {len(r) for r in replies if 0 < len(r) < len(full)}
    assert len(partial) >= 2, replies  # it grew on screen, not in one jump
    assert all(full.startswith(r) for r in replies), replies  # never garbled or repeated
    assert replies[-1] == full
    assert mid_shot != end_shot  # the screen changed as the reply grew

    stored = requests.get(f"{api.url}/session/{session_id}/messages",
                          headers={"X-API-Key": API_KEY}, timeout=10).json()["messages"]
    assert [(m["seq"], m["state"], m["reply"]["reply"]) for m in stored] == [
        (int(done["seq"]), "delivered", full)]
    assert page_errors(browser) == []


def test_across_stream_ends_the_status_follows_sleep_and_wake_and_a_reply_arrives_whole(
        browser, stack, mark_ready):
    """The server ends each stream after a second; the page resumes from its last event id
    (after the 2 s the server's `retry:` asks for): nothing it missed meanwhile is lost."""
    api = stack(EVENT_STREAM_MAX_SECONDS="1")
    open_page(browser, api.url)
    session_id = sign_in_and_create(browser, mark_ready)
    browser.execute_script(RECORD)
    until(browser, lambda d: reconnects(d) >= 2, "two resumed streams")

    def api_status() -> str:
        answer = requests.get(f"{api.url}/session/{session_id}/status",
                              headers={"X-API-Key": API_KEY}, timeout=5)
        return f"the API says {answer.json()}"

    browser.find_element(By.ID, "sleep").click()
    until(browser, lambda d: text(d, "#status") == "sleeping", "the status turn sleeping",
          also=api_status)
    mark_ready(session_id, ready=0, replicas=0)  # KEDA scales it to 0
    assert browser.find_element(By.CSS_SELECTOR, "#sessions li.selected .st").text == "sleeping"
    browser.find_element(By.ID, "wake").click()
    until(browser, lambda d: text(d, "#status") == "waking", "the status turn waking",
          also=api_status)
    mark_ready(session_id)  # KEDA and the kubelet bring the pod back
    until(browser, lambda d: text(d, "#status") == "running", "the status turn running again",
          also=api_status)

    # 80 words, 0.05 s apart: 4 s, longer than a stream's life plus the pause before a resume,
    # so part of the reply is written while the page is between two streams.
    words = " ".join(f"w{n}" for n in range(1, 81))
    full = f"echo: {words}"
    send(browser, words)
    until(browser, lambda d: last_message(d).get("state") == "delivered", "delivered",
          timeout=30)
    seq = last_message(browser)["seq"]
    replies = replies_shown(browser, seq)
    assert replies[-1] == full and all(full.startswith(r) for r in replies), replies
    timeline = seen(browser)
    first_partial = next(i for i, e in enumerate(timeline)
                         if e[:2] == ["reply", seq] and 0 < len(e[2]) < len(full))
    assert ["stream", "reconnecting"] in timeline[first_partial:], timeline  # resumed mid-reply
    assert page_errors(browser) == []


def test_a_reload_restores_the_chat_markup_stays_text_and_delete_removes_the_session(
        browser, stack, mark_ready):
    api = stack()
    open_page(browser, api.url)
    session_id = sign_in_and_create(browser, mark_ready)

    markup = '<img src=x id=injected onerror="document.title=1">hello & <b>bye</b>'
    send(browser, markup)
    until(browser, lambda d: last_message(d).get("state") == "delivered", "delivered")
    assert last_message(browser)["reply"] == f"echo: {markup}"
    assert browser.find_elements(By.CSS_SELECTOR, "#injected, #messages img, #messages b") == []

    # A reload while a 3 s reply streams in: the key is kept for the tab, the conversation
    # comes back from /messages, and the reply in flight is never shown garbled (the page
    # missed its start) but whole once it is delivered.
    words = " ".join(f"w{n}" for n in range(1, 61))
    send(browser, words)
    until(browser, lambda d: last_message(d).get("state") == "delivering", "delivering")
    browser.refresh()
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    item = f'#sessions li[data-uuid="{session_id}"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, item), "the session listed")
    assert text(browser, "#stream-state") == "idle"  # nothing selected yet
    browser.execute_script(RECORD)
    browser.find_element(By.CSS_SELECTOR, item).click()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "div.message[data-seq]")) == 2
          and last_message(d)["state"] == "delivered", "both messages delivered after a reload")
    shown = [[m.find_element(By.CSS_SELECTOR, part).get_attribute("textContent")
              for part in (".text", ".state", ".reply")]
             for m in browser.find_elements(By.CSS_SELECTOR, "div.message[data-seq]")]
    assert shown == [[markup, "delivered", f"echo: {markup}"],
                     [words, "delivered", f"echo: {words}"]]  # as typed, not as HTML
    assert browser.find_elements(By.CSS_SELECTOR, "#injected, #messages img, #messages b") == []
    replies = replies_shown(browser, last_message(browser)["seq"])
    assert all(f"echo: {words}".startswith(r) for r in replies), replies
    until(browser, lambda d: text(d, "#status") == "running", "the status")

    browser.find_element(By.ID, "delete").click()
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions li[data-uuid]"),
          "the session gone from the list")
    assert text(browser, "#stream-state") == "idle"
    wait_until(lambda: requests.get(f"{api.url}/session/{session_id}/status",
                                    headers={"X-API-Key": API_KEY}, timeout=5).status_code == 404,
               timeout=10, what="the session deleted")
    assert page_errors(browser) == []


def test_a_missing_browser_fails_loudly_with_the_install_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium chromium-driver"):
        binaries()
