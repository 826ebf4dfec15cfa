/* The API reference: Swagger UI (served by tunelab, see app/pages/api_docs.py) on the app's OpenAPI document. */
"use strict";

(() => {
  const node = document.getElementById("swagger-ui");
  SwaggerUIBundle({
    url: node.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never ask a public validator about this server's API
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
