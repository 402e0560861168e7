// Keeps mira_app_common non-empty before the first shared helper lands.
