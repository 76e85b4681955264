// mmw2s browse: filter, sort, search and page the cards of this page, from disk, with no network.
// The state lives in the URL hash (index.html#decision=dropped&sort=web-desc&q=red&page=2), so a
// view can be bookmarked, shared, and checked by a headless browser. Cards are server-rendered
// and escaped by the template engine; this script only shows, hides and reorders them, and
// writes numbers with textContent (never innerHTML).
(function () {
  "use strict";
  var grid = document.getElementById("cards");
  var form = document.getElementById("filters");
  var perPage = parseInt(grid.getAttribute("data-per-page"), 10) || 200;
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var KEYS = ["decision", "source", "noise", "min", "max", "sort", "q", "page"];

  cards.forEach(function (c) {
    var caps = c.querySelectorAll(".cap");
    c._text = Array.prototype.map.call(caps, function (e) { return e.textContent; }).join("\n").toLowerCase();
    c._order = parseInt(c.getAttribute("data-order"), 10);
    c._web = parseScore(c.getAttribute("data-web-score"));
    c._chosen = parseScore(c.getAttribute("data-chosen-score"));
  });

  function parseScore(text) {
    return text === null || text === "" ? null : parseFloat(text);
  }

  function state() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    var s = {};
    KEYS.forEach(function (k) { s[k] = p.get(k) || ""; });
    return s;
  }

  function matches(c, s) {
    if (s.decision && c.getAttribute("data-decision") !== s.decision) return false;
    if (s.source && c.getAttribute("data-source") !== s.source) return false;
    if (s.noise && c.getAttribute("data-noise") !== s.noise) return false;
    var lo = parseScore(s.min), hi = parseScore(s.max);
    if ((lo !== null && !isNaN(lo)) || (hi !== null && !isNaN(hi))) {
      if (c._web === null) return false;
      if (lo !== null && !isNaN(lo) && c._web < lo) return false;
      if (hi !== null && !isNaN(hi) && c._web > hi) return false;
    }
    return !s.q || c._text.indexOf(s.q.toLowerCase()) >= 0;
  }

  function comparator(sort) {
    var field = sort.indexOf("chosen") === 0 ? "_chosen" : "_web";
    var sign = /-desc$/.test(sort) ? -1 : 1;
    if (sort === "order" || !/-(asc|desc)$/.test(sort)) {
      return function (a, b) { return a._order - b._order; };
    }
    return function (a, b) {  // cards without a score go last either way
      var x = a[field], y = b[field];
      if (x === null || y === null) return (x === null) - (y === null) || a._order - b._order;
      return sign * (x - y) || a._order - b._order;
    };
  }

  function apply() {
    var s = state();
    KEYS.forEach(function (k) {
      if (form.elements[k]) form.elements[k].value = s[k] || (k === "sort" ? "order" : "");
    });
    var shown = cards.filter(function (c) { return matches(c, s); }).sort(comparator(s.sort || "order"));
    var pages = Math.max(1, Math.ceil(shown.length / perPage));
    var page = Math.min(Math.max(parseInt(s.page, 10) || 1, 1), pages);
    var visible = shown.slice((page - 1) * perPage, page * perPage);
    cards.forEach(function (c) { c.hidden = true; });
    visible.forEach(function (c) { c.hidden = false; grid.appendChild(c); });  // in sorted order
    var counter = document.getElementById("matching");
    counter.setAttribute("data-count", String(shown.length));
    counter.textContent = shown.length + " of " + cards.length + " cards match";
    var pageOf = document.getElementById("page-of");
    pageOf.setAttribute("data-page", String(page));
    pageOf.textContent = "page " + page + " of " + pages;
    grid.setAttribute("data-page", String(page));
    grid.setAttribute("data-pages", String(pages));
  }

  function setHash(changes) {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    Object.keys(changes).forEach(function (k) {
      if (changes[k]) p.set(k, changes[k]); else p.delete(k);
    });
    location.hash = p.toString();
  }

  form.addEventListener("input", function (e) {
    if (!e.target.name) return;
    var change = {page: ""};  // a new filter starts again at page 1
    change[e.target.name] = e.target.value;
    setHash(change);
  });
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  function step(delta) {
    return function (e) {
      e.preventDefault();
      var page = parseInt(document.getElementById("page-of").getAttribute("data-page"), 10) || 1;
      setHash({page: String(Math.max(1, page + delta))});
    };
  }
  document.getElementById("prev-page").addEventListener("click", step(-1));
  document.getElementById("next-page").addEventListener("click", step(1));
  window.addEventListener("hashchange", apply);
  apply();
})();
