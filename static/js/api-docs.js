// Starts the vendored Swagger UI on /api/docs (no inline script: the CSP refuses it).
window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  SwaggerUIBundle({ url: root.dataset.openapiUrl, dom_id: "#swagger-ui", deepLinking: true });
});
