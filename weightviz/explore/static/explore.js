// weightviz explorer: source tabs, the "expand from" chooser (live server only), arrow-key paging,
// pages of unit cards with a unit search box (layer pages) and a layer filter (index).
(function () {
  "use strict";
  document.querySelectorAll(".tabs .tab").forEach(function (tab) {
    tab.addEventListener("click", function () {
      var bar = tab.parentNode;
      bar.querySelectorAll(".tab").forEach(function (t) { t.classList.toggle("active", t === tab); });
      document.querySelectorAll(".panel").forEach(function (p) {
        p.classList.toggle("active", p.id === tab.getAttribute("data-panel"));
      });
    });
  });
  var select = document.getElementById("src-select");
  if (select) {
    select.addEventListener("change", function () {
      if (select.value) { window.location.href = select.getAttribute("data-base") + "?src=" + encodeURIComponent(select.value); }
    });
  }
  // layer pages: cards in pages of data-page-size (hidden cards load no images), a unit search box
  var grid = document.querySelector(".units[data-page-size]");
  var filter = document.getElementById("unit-filter");
  if (grid && filter) {
    var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
    var size = parseInt(grid.getAttribute("data-page-size"), 10) || 256;
    var pager = document.getElementById("pager");
    var page = 0;
    var hits = cards;
    var button = function (label, target, enabled) {
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.disabled = !enabled;
      b.addEventListener("click", function () { page = target; show(); window.scrollTo(0, grid.offsetTop - 80); });
      return b;
    };
    var show = function () {
      var q = filter.value.trim();
      hits = q ? cards.filter(function (c) { return c.getAttribute("data-unit").indexOf(q) === 0; }) : cards;
      var pages = Math.max(1, Math.ceil(hits.length / size));
      page = Math.max(0, Math.min(page, pages - 1));
      cards.forEach(function (c) { c.hidden = true; });
      hits.slice(page * size, (page + 1) * size).forEach(function (c) { c.hidden = false; });
      pager.textContent = "";
      if (pages > 1) {
        pager.appendChild(button("\u2039 prev", page - 1, page > 0));
        var label = document.createElement("span");
        label.id = "page-label";
        label.textContent = "page " + (page + 1) + " of " + pages + " \u00b7 " + hits.length + " units";
        pager.appendChild(label);
        pager.appendChild(button("next \u203a", page + 1, page < pages - 1));
      } else {
        pager.textContent = hits.length + (hits.length === 1 ? " unit" : " units");
      }
    };
    filter.addEventListener("input", function () { page = 0; show(); });
    filter.addEventListener("keydown", function (e) {
      if (e.key !== "Enter") { return; }
      var q = filter.value.trim();
      var exact = cards.filter(function (c) { return c.getAttribute("data-unit") === q; })[0] || (hits.length === 1 && hits[0]);
      if (exact) { window.location.href = exact.href; }
    });
    var goToHash = function () {  // #uN: show the page that holds unit N's card
      var m = /^#u(\d+)$/.exec(window.location.hash);
      var at = m ? cards.indexOf(document.getElementById("u" + m[1])) : -1;
      if (at >= 0) { filter.value = ""; hits = cards; page = Math.floor(at / size); }
      show();
      if (at >= 0) { cards[at].scrollIntoView(); }
    };
    window.addEventListener("hashchange", goToHash);
    goToHash();
  }
  // the index: filter layer rows by name
  var lf = document.getElementById("layer-filter");
  if (lf) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("table.layers tbody tr[data-layer]"));
    var count = document.getElementById("layer-count");
    var apply = function () {
      var q = lf.value.trim().toLowerCase();
      var n = 0;
      rows.forEach(function (r) { r.hidden = q !== "" && r.getAttribute("data-layer").toLowerCase().indexOf(q) < 0; n += r.hidden ? 0 : 1; });
      count.textContent = n + " of " + rows.length + " layers";
    };
    lf.addEventListener("input", apply);
    apply();
  }
  document.addEventListener("keydown", function (e) {
    if (e.target && /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) { return; }
    var rel = e.key === "ArrowLeft" ? "prev" : e.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) { window.location.href = link.href; }
  });
})();
